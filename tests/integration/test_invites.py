"""Invites against a real Postgres: PostgresInviteStore through the Invites use cases.

Only the token's digest is stored; a tenant has one current invite, also under concurrent issues;
revoked and expired invites authenticate nobody.
"""

import secrets
import threading
from datetime import UTC, datetime, timedelta

import pytest

from shared.adapters.invites import PostgresInviteStore
from shared.domain.errors import InvalidTenantName
from shared.domain.invites import InviteState, token_digest
from shared.domain.tenants import TenantName
from shared.service_layer.invites import Invites

PREFIX = f"invtest-{secrets.token_hex(4)}"
TTL_SECS = 3600


def tenant_name(label: str = "t") -> str:
    return f"{PREFIX}-{label}-{secrets.token_hex(3)}"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def store(pg_pool):
    yield PostgresInviteStore(pg_pool)
    with pg_pool.connection() as conn:
        conn.execute("DELETE FROM invites WHERE tenant LIKE %s", (f"{PREFIX}%",))


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def invites(store, clock):
    return Invites(store, ttl_secs=TTL_SECS, clock=clock)


def rows_as_text(pool, tenant: str) -> str:
    with pool.connection() as conn:
        rows = conn.execute("SELECT i::text FROM invites i WHERE tenant = %s", (tenant,)).fetchall()
    return "\n".join(row[0] for row in rows)


def current_count(pool, tenant: str) -> int:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM invites WHERE tenant = %s AND revoked_at IS NULL", (tenant,)
        ).fetchone()
    return row[0]


def test_an_issued_token_is_stored_only_as_its_digest(invites, pg_pool, clock):
    tenant = tenant_name()

    issued = invites.issue(tenant)

    token = issued.token.reveal()
    assert len(token) >= 43  # 32 random bytes
    assert token not in repr(issued)
    assert issued.expires_at == clock.now + timedelta(seconds=TTL_SECS)
    stored = rows_as_text(pg_pool, tenant)
    assert stored
    assert token not in stored
    assert token.encode().hex() not in stored
    assert token_digest(token).hex() in stored
    assert invites.tenant_of(token) == tenant


def test_a_new_invite_revokes_the_previous_one(invites, pg_pool):
    tenant = tenant_name()
    first = invites.issue(tenant).token.reveal()

    second = invites.issue(tenant).token.reveal()

    assert invites.tenant_of(first) is None
    assert invites.tenant_of(second) == tenant
    assert current_count(pg_pool, tenant) == 1


def test_concurrent_issues_leave_exactly_one_working_invite(store, pg_pool):
    tenant = tenant_name("race")
    invites = Invites(store, ttl_secs=TTL_SECS)
    barrier = threading.Barrier(6)
    tokens: list[str] = []
    errors: list[BaseException] = []

    def issue() -> None:
        try:
            barrier.wait()
            tokens.append(invites.issue(tenant).token.reveal())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=issue) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(tokens) == 6
    assert current_count(pg_pool, tenant) == 1
    assert [invites.tenant_of(token) for token in tokens].count(tenant) == 1


def test_revoking_ends_the_invite_and_is_idempotent(invites, pg_pool):
    tenant = tenant_name()
    token = invites.issue(tenant).token.reveal()

    invites.revoke(tenant)
    invites.revoke(tenant)

    assert invites.tenant_of(token) is None
    assert current_count(pg_pool, tenant) == 0
    assert tenant not in invites.current()


def test_an_expired_invite_authenticates_nobody_and_shows_expired(invites, clock):
    tenant = tenant_name()
    token = invites.issue(tenant).token.reveal()

    clock.now += timedelta(seconds=TTL_SECS - 1)
    assert invites.tenant_of(token) == tenant
    clock.now += timedelta(seconds=1)

    assert invites.tenant_of(token) is None
    assert invites.current()[tenant].state(clock.now) is InviteState.EXPIRED


def test_a_used_invite_keeps_working_and_keeps_its_first_use(invites, clock):
    tenant = tenant_name()
    token = invites.issue(tenant).token.reveal()
    assert invites.current()[tenant].state(clock.now) is InviteState.PENDING

    invites.record_use(token)
    first_use = invites.current()[tenant].used_at
    invites.record_use(token)

    invite = invites.current()[tenant]
    assert invite.used_at == first_use is not None
    assert invite.state(clock.now) is InviteState.USED
    assert invites.tenant_of(token) == tenant


def test_an_unknown_token_names_no_tenant(invites):
    assert invites.tenant_of(secrets.token_urlsafe(32)) is None
    assert invites.tenant_of("") is None


def test_an_invite_is_bound_to_the_normalised_tenant_name(invites):
    decomposed = f"{PREFIX}-cafe\u0301"

    issued = invites.issue(TenantName(decomposed))

    assert issued.tenant == f"{PREFIX}-caf\u00e9"
    assert invites.tenant_of(issued.token.reveal()) == issued.tenant
    with pytest.raises(InvalidTenantName):
        invites.issue(TenantName("../etc"))
