"""PostgresTenantDirectory against a real Postgres: onboarding state, versions, offboarding."""

import secrets
import threading
import unicodedata

import pytest
from psycopg_pool import ConnectionPool

from shared.adapters.tenants import PostgresTenantDirectory
from shared.domain.errors import RegistryUnavailable
from shared.domain.tenants import TenantName
from tests.support.processes import free_port

PREFIX = f"dirtest-{secrets.token_hex(4)}"


def tenant_name(label: str = "t") -> TenantName:
    return TenantName(f"{PREFIX}-{label}-{secrets.token_hex(3)}")


@pytest.fixture(scope="module")
def directory(pg_pool):
    yield PostgresTenantDirectory(pg_pool)
    with pg_pool.connection() as conn:
        conn.execute("DELETE FROM tenants WHERE name LIKE %s", (f"{PREFIX}%",))


def test_first_onboarding_records_times_and_version(directory):
    tenant = tenant_name()

    record = directory.record_onboarded(tenant, 1)

    assert record.name == tenant
    assert record.onboarded
    assert record.onboarded_at == record.updated_at
    assert record.onboarded_at.utcoffset().total_seconds() == 0
    assert (record.offboarded_at, record.secrets_version) == (None, 1)
    assert directory.get(tenant) == record
    assert directory.is_onboarded(tenant)


def test_a_later_version_keeps_the_onboarding_time(directory):
    tenant = tenant_name()
    first = directory.record_onboarded(tenant, 1)

    second = directory.record_onboarded(tenant, 2)

    assert second.onboarded_at == first.onboarded_at
    assert second.updated_at > first.updated_at
    assert second.secrets_version == 2


def test_versions_recorded_out_of_order_never_go_backwards(directory):
    tenant = tenant_name()
    directory.record_onboarded(tenant, 3)

    assert directory.record_onboarded(tenant, 2).secrets_version == 3


def test_concurrent_recordings_keep_the_newest_version(directory):
    tenant = tenant_name()
    versions = list(range(1, 17))
    start = threading.Barrier(len(versions))

    def record(version: int) -> None:
        start.wait(10)
        directory.record_onboarded(tenant, version)

    threads = [threading.Thread(target=record, args=(v,)) for v in reversed(versions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)

    assert directory.get(tenant).secrets_version == max(versions)


def test_offboarding_clears_the_state_and_reonboarding_starts_over(directory):
    tenant = tenant_name()
    onboarded = directory.record_onboarded(tenant, 4)

    offboarded = directory.record_offboarded(tenant)

    assert not offboarded.onboarded
    assert (offboarded.onboarded_at, offboarded.secrets_version) == (None, None)
    assert offboarded.offboarded_at >= onboarded.updated_at
    assert not directory.is_onboarded(tenant)

    # Vault numbers a re-created key from 1 again; the directory follows.
    again = directory.record_onboarded(tenant, 1)
    assert again.onboarded
    assert again.secrets_version == 1
    assert again.onboarded_at > onboarded.onboarded_at
    assert again.offboarded_at == offboarded.offboarded_at  # kept as history


def test_offboarding_an_unknown_tenant_adds_no_row(directory):
    tenant = tenant_name("typo")

    assert directory.record_offboarded(tenant) is None
    assert directory.get(tenant) is None
    assert not directory.is_onboarded(tenant)


def test_list_shows_every_known_tenant_by_name(directory):
    names = sorted(tenant_name(label) for label in ("c", "a", "b"))
    for name in names:
        directory.record_onboarded(name, 1)
    directory.record_offboarded(names[1])

    listed = [record for record in directory.list() if record.name in names]

    assert [record.name for record in listed] == names
    assert [record.onboarded for record in listed] == [True, False, True]


def test_names_are_stored_under_their_nfc_form_and_read_back_as_tenant_names(directory):
    decomposed = unicodedata.normalize("NFD", f"{PREFIX}-école")

    directory.record_onboarded(TenantName(decomposed), 1)

    composed = unicodedata.normalize("NFC", decomposed)
    record = directory.get(TenantName(composed))
    assert record.secrets_version == 1
    assert record.name == composed and type(record.name) is TenantName
    assert type(directory.list()[0].name) is TenantName


def test_a_row_written_by_hand_with_a_name_the_rules_refuse_is_still_listed(directory, pg_pool):
    hand_written = f"{PREFIX}-by hand/x"
    with pg_pool.connection() as conn:
        conn.execute("INSERT INTO tenants (name) VALUES (%s)", (hand_written,))

    assert hand_written in [record.name for record in directory.list()]


@pytest.mark.parametrize("version", [0, -1, True, "1", None])
def test_versions_are_positive_integers(directory, version):
    with pytest.raises(ValueError):
        directory.record_onboarded(tenant_name(), version)


def test_an_unreachable_database_is_registry_unavailable():
    pool = ConnectionPool(
        f"postgresql://postgres@127.0.0.1:{free_port()}/nothing",
        min_size=0,
        max_size=1,
        timeout=1,
        open=True,
    )
    try:
        directory = PostgresTenantDirectory(pool)
        with pytest.raises(RegistryUnavailable):
            directory.record_onboarded(tenant_name(), 1)
        with pytest.raises(RegistryUnavailable):
            directory.is_onboarded(tenant_name())
    finally:
        pool.close()
