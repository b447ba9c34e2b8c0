"""bench/gateway_without_read.py's registry, the instrument that shows what the gateway's read
costs: each distinct page is read from Postgres once and then served as it was, whatever the rows
do meanwhile, and its answers are the registry's own."""

import secrets

import pytest

from bench.gateway_without_read import PagesFromMemory
from shared.adapters.registry import PostgresFleetRegistry
from shared.domain.lifecycle import Status
from shared.domain.tenants import TenantName


@pytest.fixture
def tenant(pg_pool):
    name = TenantName(f"bench-{secrets.token_hex(6)}")
    yield name
    with pg_pool.connection() as conn:
        conn.execute("DELETE FROM instances WHERE tenant = %s", (name,))


def test_each_page_is_read_once_and_then_served_from_memory(pg_pool, tenant):
    registry = PostgresFleetRegistry(pg_pool)
    pages = PagesFromMemory(pg_pool)
    for _ in range(3):
        registry.create(tenant)

    first = pages.list_json(tenant=tenant, limit=2)
    assert first == registry.list_json(tenant=tenant, limit=2)
    assert first[1] is not None  # three rows, two a page: there is a next page
    # The statuses are taken as any iterable, as the registry takes them, and kept as a tuple.
    pending = pages.list_json(tenant=tenant, statuses=iter([Status.PENDING]), limit=2)
    assert pending == registry.list_json(tenant=tenant, statuses=[Status.PENDING], limit=2)

    registry.create(tenant)  # the registry sees the new row; the instrument does not
    assert registry.list_json(tenant=tenant, limit=2) != first
    assert pages.list_json(tenant=tenant, limit=2) == first
    # Another page (its cursor) is read afresh, once.
    after = pages.list_json(tenant=tenant, limit=2, cursor=first[1])
    assert after == registry.list_json(tenant=tenant, limit=2, cursor=first[1])
