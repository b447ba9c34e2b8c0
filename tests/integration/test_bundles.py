"""EnvelopeBundleStore and bundle key rotation against real Postgres and a real OpenBao transit.

The property under test above all: `get` returns None only when there is certainly no row; every
failure is BundleBackendUnavailable (or BundleIntegrityError), never "no bundle".
"""

import base64
import secrets
import threading
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from shared.adapters.bundles import (
    EnvelopeBundleStore,
    PostgresIdentityClaims,
    rotate_bundle_key,
)
from shared.adapters.db import make_pool, migrate
from shared.adapters.vault_client import vault_client
from shared.adapters.vault_transit import TransitKeys
from shared.domain.errors import BundleBackendUnavailable, BundleIntegrityError
from shared.domain.secrets import Bundle
from shared.settings import Settings
from tests.support.processes import free_port, wait_until

KEY = "dark-bundles"


def transit_for(bao, key_name: str = KEY) -> TransitKeys:
    client = vault_client(Settings(vault_addr=bao.addr, vault_token=bao.token))
    return TransitKeys(client, key_name=key_name)


def canary() -> str:
    return "canary-" + secrets.token_hex(12)


def make_bundle(secret_value: str) -> Bundle:
    return Bundle(
        {
            "version": 1,
            "ssh": {"private_key": secret_value, "comment": "ключ für 東京"},
            "forges": [{"name": "github", "token": secret_value[::-1]}],
        }
    )


def put_claimed(store: EnvelopeBundleStore, tenant: str, bundle: Bundle) -> bool:
    """Put as an instance that holds the tenant's identity claim (the only way a put stores)."""
    owner, _ = store.claim(tenant, uuid.uuid4())
    return store.put(tenant, bundle, owner)


def raw_row(pool: ConnectionPool, tenant: str) -> tuple | None:
    with pool.connection() as conn:
        return conn.execute(
            "SELECT wrapped_key, nonce, ciphertext FROM credential_bundles WHERE tenant = %s",
            (tenant,),
        ).fetchone()


@pytest.fixture
def transit(openbao):
    return transit_for(openbao)


@pytest.fixture
def store(pg_pool, transit):
    return EnvelopeBundleStore(pg_pool, transit)


@pytest.fixture
def new_tenant(pg_pool):
    """Makes unique tenant names; their rows in the session database go at the end."""
    made: list[str] = []

    def make(stem: str = "tenant") -> str:
        name = f"{stem}-{secrets.token_hex(4)}"
        made.append(name)
        return name

    yield make
    with pg_pool.connection() as conn:
        conn.execute("DELETE FROM credential_bundles WHERE tenant = ANY(%s)", (made,))
        conn.execute("DELETE FROM identity_claims WHERE tenant = ANY(%s)", (made,))


@pytest.fixture
def private_pool(database_url):
    """A database of the test's own, for rotations, which touch every row in the table."""
    base = database_url.rsplit("/", 1)[0]
    name = f"dark_test_bundles_{secrets.token_hex(4)}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        migrate(f"{base}/{name}")
        pool = make_pool(f"{base}/{name}")
        try:
            yield pool
        finally:
            pool.close()
    finally:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def test_put_then_get_round_trips_and_delete_removes_it(store, new_tenant):
    tenant = new_tenant("Москва")
    bundle = make_bundle(canary())

    assert put_claimed(store, tenant, bundle) is True
    assert store.get(tenant) == bundle

    store.delete(tenant)
    assert store.get(tenant) is None


def test_a_second_first_write_for_a_tenant_keeps_the_first(store, pg_pool, new_tenant):
    """A tenant's identity is created once: the losing writer learns it lost and must import."""
    tenant = new_tenant("twice")
    first, second = make_bundle(canary()), make_bundle(canary())

    won_first = put_claimed(store, tenant, first)
    row = raw_row(pg_pool, tenant)
    won_second = put_claimed(store, tenant, second)

    assert store.get(tenant) == first
    assert raw_row(pg_pool, tenant) == row
    assert (won_first, won_second) == (True, False)


def test_a_put_by_an_instance_not_holding_the_claim_stores_nothing(store, pg_pool, new_tenant):
    tenant = new_tenant("noclaim")
    owner, other = uuid.uuid4(), uuid.uuid4()
    assert store.put(tenant, make_bundle(canary()), owner) is False  # nobody claimed yet
    store.claim(tenant, owner)
    assert store.put(tenant, make_bundle(canary()), other) is False

    store.delete(tenant)  # offboarding: the claim goes, so its owner's late put stores nothing
    assert store.put(tenant, make_bundle(canary()), owner) is False
    assert raw_row(pg_pool, tenant) is None


def test_the_claims_reader_names_the_owner_only_while_no_bundle_is_stored(
    store, pg_pool, new_tenant
):
    tenant = new_tenant("pending")
    claims = PostgresIdentityClaims(pg_pool)
    assert claims.pending_claim(tenant) is None
    owner, _ = store.claim(tenant, uuid.uuid4())
    assert claims.pending_claim(tenant) == owner
    assert store.put(tenant, make_bundle(canary()), owner) is True
    assert claims.pending_claim(tenant) is None


def test_get_without_a_row_is_none(store, new_tenant):
    assert store.get(new_tenant()) is None


def _fragments(secret_value: str) -> set[str]:
    """Every 8-character window of the value and of its hex and base64 spellings."""
    raw = secret_value.encode()
    forms = {secret_value, raw.hex(), raw.hex().upper()}
    for shift in range(3):
        # A value embedded at any offset shows up in base64 as one of three alignments; only
        # the complete 4-character groups are certain.
        chunk = raw[shift:]
        whole = len(chunk) // 3 * 4
        forms |= {
            base64.b64encode(chunk).decode()[:whole],
            base64.urlsafe_b64encode(chunk).decode()[:whole],
        }
    return {form[i : i + 8] for form in forms for i in range(len(form) - 7)}


def test_stored_row_holds_no_fragment_of_the_plaintext(store, pg_pool, new_tenant):
    tenant = new_tenant()
    secret_value = canary()
    put_claimed(store, tenant, make_bundle(secret_value))

    with pg_pool.connection() as conn:
        row_text, nonce, ciphertext = conn.execute(
            "SELECT b::text, nonce, ciphertext FROM credential_bundles b WHERE tenant = %s",
            (tenant,),
        ).fetchone()
    haystacks = [row_text, nonce.decode("latin-1"), ciphertext.decode("latin-1")]

    fragments = _fragments(secret_value) | _fragments(secret_value[::-1])
    assert len(fragments) > 100
    leaked = {f for f in fragments for haystack in haystacks if f in haystack}
    assert not leaked


def test_rows_swapped_between_tenants_fail_integrity(store, pg_pool, new_tenant):
    alice, bob = new_tenant("alice"), new_tenant("bob")
    put_claimed(store, alice, make_bundle(canary()))
    put_claimed(store, bob, make_bundle(canary()))

    with pg_pool.connection() as conn:
        conn.execute(
            "UPDATE credential_bundles AS mine SET wrapped_key = theirs.wrapped_key,"
            " nonce = theirs.nonce, ciphertext = theirs.ciphertext"
            " FROM credential_bundles AS theirs"
            " WHERE (mine.tenant, theirs.tenant) IN ((%s, %s), (%s, %s))",
            (alice, bob, bob, alice),
        )

    for tenant in (alice, bob):
        with pytest.raises(BundleIntegrityError):
            store.get(tenant)


def test_tampered_ciphertext_fails_integrity(store, pg_pool, new_tenant):
    tenant = new_tenant()
    put_claimed(store, tenant, make_bundle(canary()))

    with pg_pool.connection() as conn:
        conn.execute(
            "UPDATE credential_bundles SET ciphertext = set_byte(ciphertext, 0,"
            " get_byte(ciphertext, 0) # 1) WHERE tenant = %s",
            (tenant,),
        )

    with pytest.raises(BundleIntegrityError):
        store.get(tenant)


def test_unreachable_postgres_is_unavailable_never_none(transit, new_tenant):
    unreachable = ConnectionPool(
        f"postgresql://postgres@127.0.0.1:{free_port()}/dark",
        min_size=1,
        max_size=1,
        timeout=0.5,
        kwargs={"connect_timeout": 1},
        open=True,
    )
    try:
        store = EnvelopeBundleStore(unreachable, transit)
        tenant = new_tenant()
        for call in (
            lambda: store.get(tenant),
            lambda: store.put(tenant, make_bundle(canary()), uuid.uuid4()),
            lambda: store.delete(tenant),
        ):
            with pytest.raises(BundleBackendUnavailable, match="PoolTimeout") as caught:
                call()
            assert not isinstance(caught.value, BundleIntegrityError)
    finally:
        unreachable.close()


def test_closed_pool_is_unavailable_never_none(migrated_database_url, transit, new_tenant):
    closed = make_pool(migrated_database_url)
    closed.close()

    with pytest.raises(BundleBackendUnavailable, match="PoolClosed"):
        EnvelopeBundleStore(closed, transit).get(new_tenant())


def test_sealed_transit_is_unavailable_and_leaves_the_row_alone(
    private_openbao, pg_pool, new_tenant
):
    store = EnvelopeBundleStore(pg_pool, transit_for(private_openbao))
    tenant = new_tenant()
    put_claimed(store, tenant, make_bundle(canary()))
    before = raw_row(pg_pool, tenant)

    private_openbao.seal()

    with pytest.raises(BundleBackendUnavailable, match="VaultDown") as read_error:
        store.get(tenant)
    assert not isinstance(read_error.value, BundleIntegrityError)
    with pytest.raises(BundleBackendUnavailable, match="VaultDown"):
        put_claimed(store, tenant, make_bundle(canary()))
    assert raw_row(pg_pool, tenant) == before


def test_rotation_rewraps_every_bundle_and_retires_the_old_key_version(
    private_openbao, private_pool
):
    transit = transit_for(private_openbao)
    store = EnvelopeBundleStore(private_pool, transit)
    bundles = {f"tenant-{i}": make_bundle(canary()) for i in range(5)}
    for tenant, bundle in bundles.items():
        put_claimed(store, tenant, bundle)
    old_wrapped, _, _ = raw_row(private_pool, "tenant-0")
    assert old_wrapped.startswith("vault:v1:")

    rotation = rotate_bundle_key(private_pool, transit, batch_size=2)

    assert (rotation.key_version, rotation.rewrapped, rotation.changed_meanwhile) == (2, 5, 0)
    for tenant, bundle in bundles.items():
        assert store.get(tenant) == bundle
        assert raw_row(private_pool, tenant)[0].startswith("vault:v2:")
    with pytest.raises(BundleBackendUnavailable):
        transit.unwrap(old_wrapped)

    # A row put back with its pre-rotation wrapped key is an error, never "no bundle", and a
    # rotation that cannot rewrap it stops before retiring any key version.
    with private_pool.connection() as conn:
        conn.execute(
            "UPDATE credential_bundles SET wrapped_key = %s WHERE tenant = 'tenant-0'",
            (old_wrapped,),
        )
    with pytest.raises(BundleBackendUnavailable):
        store.get("tenant-0")
    with pytest.raises(BundleBackendUnavailable):
        rotate_bundle_key(private_pool, transit)
    assert min_decryption_version(private_openbao) == 2
    for tenant in list(bundles)[1:]:
        assert store.get(tenant) == bundles[tenant]

    with private_pool.connection() as conn:
        conn.execute("DELETE FROM credential_bundles WHERE tenant = 'tenant-0'")
    again = rotate_bundle_key(private_pool, transit)

    assert (again.key_version, again.rewrapped) == (4, 4)
    assert min_decryption_version(private_openbao) == 4
    for tenant in list(bundles)[1:]:
        assert store.get(tenant) == bundles[tenant]


def min_decryption_version(bao) -> int:
    return bao.client().secrets.transit.read_key(KEY)["data"]["min_decryption_version"]


def waiting_for_advisory_lock(conn: psycopg.Connection) -> bool:
    return conn.execute(
        "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
    ).fetchone()[0]


class PausingTransit(TransitKeys):
    """The real transit, pausing once Vault has handed out a data key, as a slow put would."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fetched = threading.Event()
        self.resume = threading.Event()

    def data_key(self) -> tuple[bytes, str]:
        key = super().data_key()
        self.fetched.set()
        self.resume.wait(30)
        return key


def test_rotation_waits_for_a_put_whose_data_key_predates_it(private_openbao, private_pool):
    transit = transit_for(private_openbao)
    bundle = make_bundle(canary())
    slow = PausingTransit(
        vault_client(Settings(vault_addr=private_openbao.addr, vault_token=private_openbao.token)),
        key_name=KEY,
    )
    outcomes: dict[str, object] = {}

    def run(name, target, *args):
        try:
            outcomes[name] = target(*args)
        except BaseException as exc:
            outcomes[name] = exc

    owner, _ = EnvelopeBundleStore(private_pool, transit).claim("late", uuid.uuid4())
    put = threading.Thread(
        target=run,
        args=("put", EnvelopeBundleStore(private_pool, slow).put, "late", bundle, owner),
    )
    put.start()
    assert slow.fetched.wait(10)  # the put now holds a data key wrapped under v1
    rotate = threading.Thread(
        target=run, args=("rotation", rotate_bundle_key, private_pool, transit)
    )
    rotate.start()
    # Let the rotation go as far as it will while the put is paused: to the end (the race this
    # test guards against) or to waiting for the put's lock.
    with psycopg.connect(private_pool.conninfo, autocommit=True) as conn:
        wait_until(
            lambda: not rotate.is_alive() or waiting_for_advisory_lock(conn),
            10,
            what="the rotation to finish or wait for the put in flight",
        )
    slow.resume.set()
    put.join(10)
    rotate.join(10)

    assert outcomes["put"] is True
    assert EnvelopeBundleStore(private_pool, transit).get("late") == bundle
    assert raw_row(private_pool, "late")[0].startswith("vault:v2:")
    rotation = outcomes["rotation"]
    assert (rotation.key_version, rotation.rewrapped) == (2, 1)


def test_ensure_key_creates_a_missing_key_once(openbao):
    name = f"test-key-{secrets.token_hex(4)}"
    transit = transit_for(openbao, key_name=name)
    with pytest.raises(BundleBackendUnavailable):
        transit.latest_version()

    try:
        transit.ensure_key()
        transit.ensure_key()

        assert transit.latest_version() == 1
        key, wrapped = transit.data_key()
        assert transit.unwrap(wrapped) == key
        raw = openbao.client().secrets.transit
        assert raw.read_key(name)["data"]["type"] == "aes256-gcm96"
    finally:
        raw = openbao.client().secrets.transit
        raw.update_key_configuration(name, deletion_allowed=True)
        raw.delete_key(name)
