"""The tenant-name pattern the OpenAPI documents state (shared/web/openapi.py) against the rule
that validation enforces (shared/domain/tenants.py).

The pattern is permissive outside ASCII (which characters are letters, digits and marks is left
to the server), so it must accept every valid name and, among ASCII-only names, exactly the valid
ones.
"""

import re
import unicodedata

import pytest

from shared.domain.errors import InvalidTenantName
from shared.domain.tenants import MAX_TENANT_LENGTH, TenantName
from shared.web import TENANT_CONSTRAINTS, TENANT_PATTERN, tenant_parameter
from tests.unit.test_tenants import ACCEPTED

PATTERN = re.compile(TENANT_PATTERN)


def valid(name: str) -> bool:
    try:
        TenantName(name)
    except InvalidTenantName:
        return False
    return True


def documented(name: str) -> bool:
    return (
        TENANT_CONSTRAINTS["minLength"] <= len(name) <= TENANT_CONSTRAINTS["maxLength"]
        # fullmatch: ECMA's `$` is the end of the string; Python's `$` also matches before a final
        # newline, which `search` would let through.
        and PATTERN.fullmatch(name) is not None
    )


def test_the_constraints_are_the_domain_s():
    assert TENANT_CONSTRAINTS["minLength"] == 1
    assert TENANT_CONSTRAINTS["maxLength"] == MAX_TENANT_LENGTH
    schema = tenant_parameter()["schema"]
    assert schema == {"type": "string", **TENANT_CONSTRAINTS}


@pytest.mark.parametrize("name", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_every_valid_name_matches_the_pattern(name):
    assert valid(name)
    assert documented(unicodedata.normalize("NFC", name))


def test_among_ascii_names_the_pattern_is_the_rule():
    characters = [chr(code) for code in range(128)]
    names = [
        *characters,
        *("a" + ch for ch in characters),
        *(ch + "a" for ch in characters),
        "a" * MAX_TENANT_LENGTH,
        "a" * (MAX_TENANT_LENGTH + 1),
        "",
        ".hidden",
        "-acme",
        "acme.",
    ]
    mismatches = [name for name in names if documented(name) != valid(name)]
    assert mismatches == []


def test_the_pattern_is_plain_enough_for_ecma_and_python():
    # \x escapes, classes and anchors only: no \p{...}, no lookaround, no flags.
    assert re.fullmatch(r"[\^\[\]\\x0-9a-f\-*$]+", TENANT_PATTERN), TENANT_PATTERN
