"""Header values are validated with patterns anchored by `\\Z`: `$` also matches before a trailing
newline, so "key\\n" would pass a `$`-anchored pattern and be stored or echoed with the newline."""

import re
from pathlib import Path

import pytest
from marshmallow import ValidationError

from services.api.schemas import ProvisionHeaders
from shared.logs import new_request_id

ROOT = Path(__file__).resolve().parents[2]
# A compiled pattern whose literal ends its match with `$`.
_DOLLAR_ANCHORED = re.compile(r"""re\.compile\(\s*r?["'][^"']*\$["']\s*\)""")


def test_an_idempotency_key_with_a_trailing_newline_is_refused():
    assert ProvisionHeaders().load({"Idempotency-Key": "order-42"}) == {
        "idempotency_key": "order-42"
    }
    for value in ("order-42\n", "order-42\r\n", "\norder-42"):
        with pytest.raises(ValidationError) as caught:
            ProvisionHeaders().load({"Idempotency-Key": value})
        assert "Idempotency-Key" in caught.value.messages


def test_a_request_id_with_a_trailing_newline_is_replaced_not_echoed():
    assert new_request_id("req-1.a:b") == "req-1.a:b"
    fresh = new_request_id("req-1\n")
    assert fresh != "req-1\n" and "\n" not in fresh
    assert re.fullmatch(r"[0-9a-f]{32}", fresh)


def test_no_pattern_in_the_services_is_anchored_with_a_dollar():
    sources = [*ROOT.glob("shared/**/*.py"), *ROOT.glob("services/**/*.py")]
    offenders = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in sources
        for match in _DOLLAR_ANCHORED.finditer(path.read_text())
    ]
    assert sources and not offenders
