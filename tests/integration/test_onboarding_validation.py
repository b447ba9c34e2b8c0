"""Bad requests to `PUT /tenants/<tenant>/secrets`: each is refused with 400/413/415/422 and the
reason, never repeats a submitted secret (checked by `Api`), and writes nothing: OpenBao holds the
same keys at the same versions afterwards (listed through hvac), and the Postgres tenant rows are
unchanged.

Bodies are sent over an onboarded tenant, so "writes nothing" also means "overwrites nothing".
"""

import json
import secrets
from dataclasses import dataclass

import pytest

from services.onboarding.app import create_app
from shared.adapters.registry import PostgresFleetRegistry
from shared.adapters.tenants import PostgresTenantDirectory
from tests.support.onboarding import (
    Api,
    canary,
    error_of,
    forge,
    forget_tenants,
    onboard,
    secrets_body,
    settings_for,
)

PREFIX = f"onbval-{secrets.token_hex(4)}"
VICTIM = f"{PREFIX}-victim"


@dataclass(frozen=True)
class Bad:
    status: int
    body: bytes
    # Where the reason shows in `details.fields` (a 422), e.g. ("forges", "0", "host").
    field: tuple[str, ...] = ()
    # The tenant path segment exactly as sent (already percent-encoded); None → the victim.
    tenant: str | None = None
    content_type: str = "application/json"


def body(**overrides) -> bytes:
    return json.dumps(secrets_body(**overrides)).encode()


def without(key: str) -> bytes:
    document = secrets_body()
    del document[key]
    return json.dumps(document).encode()


def with_extra(key: str, value: object) -> bytes:
    return json.dumps({**secrets_body(), key: value}).encode()


def raw_body(text: str) -> bytes:
    return text.encode()


CLAUDE, NKS, FORGES = ("claude_oauth_token",), ("nks_pat",), ("forges",)

BAD = {
    # the Claude token
    "claude-wrong-prefix": Bad(422, body(claude_oauth_token=canary("sk-ant-api03-")), CLAUDE),
    "claude-empty": Bad(422, body(claude_oauth_token=""), CLAUDE),
    "claude-prefix-only": Bad(422, body(claude_oauth_token="sk-ant-oat01-"), CLAUDE),
    "claude-oversize": Bad(
        422, body(claude_oauth_token=canary("sk-ant-oat01-") + "a" * 600), CLAUDE
    ),
    "claude-bad-alphabet": Bad(
        422, body(claude_oauth_token=canary("sk-ant-oat01-") + "+/="), CLAUDE
    ),
    "claude-trailing-newline": Bad(
        422, body(claude_oauth_token=canary("sk-ant-oat01-") + "\n"), CLAUDE
    ),
    "claude-not-a-string": Bad(422, body(claude_oauth_token=12345), CLAUDE),
    "claude-missing": Bad(422, without("claude_oauth_token"), CLAUDE),
    # the NKS token
    "nks-empty": Bad(422, body(nks_pat=""), NKS),
    "nks-oversize": Bad(422, body(nks_pat=canary("nks-") + "x" * 600), NKS),
    "nks-whitespace": Bad(422, body(nks_pat=canary("nks ")), NKS),
    "nks-control-character": Bad(422, body(nks_pat=canary("nks\x07")), NKS),
    "nks-null": Bad(422, body(nks_pat=None), NKS),
    "nks-a-list": Bad(422, body(nks_pat=[canary("nks-")]), NKS),
    # forges
    "forges-missing": Bad(422, without("forges"), FORGES),
    "forges-an-object": Bad(422, body(forges={"github": canary("ghp_")}), FORGES),
    "forge-a-string": Bad(422, body(forges=[canary("ghp_")]), ("forges", "0", "_schema")),
    "forge-name-uppercase": Bad(422, body(forges=[forge(name="GitHub")]), ("forges", "0", "name")),
    "forge-name-too-long": Bad(422, body(forges=[forge(name="a" * 64)]), ("forges", "0", "name")),
    "forge-name-trailing-junk": Bad(
        422, body(forges=[forge(name="github!")]), ("forges", "0", "name")
    ),
    "forge-name-trailing-newline": Bad(
        422, body(forges=[forge(name="github\n")]), ("forges", "0", "name")
    ),
    "forge-name-empty": Bad(422, body(forges=[forge(name="")]), ("forges", "0", "name")),
    "forge-host-with-scheme": Bad(
        422, body(forges=[forge(host="https://github.com")]), ("forges", "0", "host")
    ),
    "forge-host-with-path": Bad(
        422, body(forges=[forge(), forge(name="b", host="github.com/org")]), ("forges", "1", "host")
    ),
    "forge-host-empty-label": Bad(
        422, body(forges=[forge(host="github..com")]), ("forges", "0", "host")
    ),
    "forge-host-port-out-of-range": Bad(
        422, body(forges=[forge(host="git.example.org:70000")]), ("forges", "0", "host")
    ),
    "forge-host-user-info": Bad(
        422, body(forges=[forge(host="user@github.com")]), ("forges", "0", "host")
    ),
    "forge-host-empty": Bad(422, body(forges=[forge(host="")]), ("forges", "0", "host")),
    "forge-token-empty": Bad(422, body(forges=[forge(token="")]), ("forges", "0", "token")),
    "forge-token-oversize": Bad(
        422, body(forges=[forge(token=canary("ghp_") + "x" * 1100)]), ("forges", "0", "token")
    ),
    "forge-token-whitespace": Bad(
        422, body(forges=[forge(token=canary("ghp_ "))]), ("forges", "0", "token")
    ),
    "duplicate-forge-names": Bad(422, body(forges=[forge(), forge()]), FORGES),
    "too-many-forges": Bad(422, body(forges=[forge(name=f"f{i}") for i in range(21)]), FORGES),
    # unknown fields
    "unknown-top-level-field": Bad(422, with_extra("role", "admin"), ("role",)),
    "unknown-field-in-a-forge": Bad(
        422, body(forges=[forge(scope="all")]), ("forges", "0", "scope")
    ),
    "secret-pasted-as-a-field-name": Bad(422, with_extra(canary("sk-ant-oat01-"), 1), ("_schema",)),
    # not a JSON object
    "not-json": Bad(400, raw_body(f"claude_oauth_token={canary('sk-ant-oat01-')}")),
    "truncated-json": Bad(400, body()[:-1]),
    "trailing-garbage": Bad(400, body() + b"}"),
    "duplicate-keys": Bad(
        400, raw_body(json.dumps(secrets_body())[:-1] + f', "nks_pat": "{canary("nks-")}"}}')
    ),
    "nan": Bad(400, raw_body('{"claude_oauth_token": NaN, "nks_pat": "x", "forges": []}')),
    "invalid-utf8": Bad(400, b'{"nks_pat": "\xff\xfe"}'),
    "deeply-nested": Bad(400, b"[" * 30_000 + b"]" * 30_000),
    "empty-body": Bad(400, b""),
    "json-array": Bad(422, raw_body(json.dumps([secrets_body()])), ("_schema",)),
    "json-string": Bad(422, raw_body(json.dumps(canary("sk-ant-oat01-"))), ("_schema",)),
    "json-null": Bad(422, b"null", ("_schema",)),
    "oversize-body": Bad(413, body(padding="x" * 70_000)),
    "form-encoded": Bad(415, b"nks_pat=x", content_type="application/x-www-form-urlencoded"),
    # tenant names (with a valid body)
    "tenant-10000-characters": Bad(422, body(), ("tenant",), tenant="a" * 10_000),
    "tenant-dot-dot": Bad(422, body(), ("tenant",), tenant=".."),
    "tenant-dot-dot-encoded": Bad(422, body(), ("tenant",), tenant="%2e%2e"),
    "tenant-slash-encoded": Bad(422, body(), ("tenant",), tenant=f"{PREFIX}%2Fother"),
    "tenant-slash-traversal": Bad(422, body(), ("tenant",), tenant=f"{PREFIX}%2F..%2Fvictim"),
    "tenant-empty": Bad(422, body(), ("tenant",), tenant=""),
    "tenant-leading-dot": Bad(422, body(), ("tenant",), tenant=".hidden"),
    "tenant-nul": Bad(422, body(), ("tenant",), tenant=f"{PREFIX}%00"),
    "tenant-newline": Bad(422, body(), ("tenant",), tenant=f"{PREFIX}%0Ax"),
    "tenant-escape": Bad(422, body(), ("tenant",), tenant=f"{PREFIX}%1B"),
    "tenant-space": Bad(422, body(), ("tenant",), tenant=f"{PREFIX}%20x"),
    "tenant-percent": Bad(422, body(), ("tenant",), tenant=f"{PREFIX}%25"),
    "tenant-backslash": Bad(422, body(), ("tenant",), tenant=f"{PREFIX}%5C..%5Cvictim"),
    "tenant-zero-width-joiner": Bad(422, body(), ("tenant",), tenant=f"{PREFIX}%E2%80%8D"),
    "tenant-64-characters": Bad(422, body(), ("tenant",), tenant="t" * 64),
}


@pytest.fixture(scope="module")
def env(openbao, migrated_database_url, pg_pool):
    app = create_app(
        settings_for(openbao, migrated_database_url),
        tenants=PostgresTenantDirectory(pg_pool),
        fleet_counts=PostgresFleetRegistry(pg_pool),
    )
    api = Api(app)
    onboard(api, VICTIM)
    raw = openbao.client()
    yield api, raw, pg_pool
    forget_tenants(raw, pg_pool, PREFIX)


def vault_state(raw) -> dict[str, int]:
    """Every key under tenants/ and its current version."""
    kv = raw.secrets.kv.v2
    keys = kv.list_secrets("tenants")["data"]["keys"]
    return {
        key: kv.read_secret_metadata(f"tenants/{key}")["data"]["current_version"] for key in keys
    }


def postgres_state(pool) -> list[tuple]:
    with pool.connection() as conn:
        return conn.execute("SELECT * FROM tenants ORDER BY name").fetchall()


def test_the_table_is_long_enough():
    assert len(BAD) >= 25


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_a_bad_request_is_refused_with_its_reason_and_writes_nothing(env, case):
    api, raw, pool = env
    vault_before, postgres_before = vault_state(raw), postgres_state(pool)
    tenant = VICTIM if case.tenant is None else case.tenant

    resp = api(
        "PUT",
        f"/tenants/{tenant}/secrets",
        data=case.body,
        headers={"Content-Type": case.content_type},
    )

    assert resp.status_code == case.status, resp.get_data(as_text=True)
    error = error_of(resp)
    if case.field:
        reasons = error["details"]["fields"]
        for part in case.field:
            assert part in reasons, (case.field, error)
            reasons = reasons[part]
        assert reasons and all(isinstance(reason, str) for reason in reasons)
    assert vault_state(raw) == vault_before
    assert postgres_state(pool) == postgres_before
