"""Credential bundles in Postgres, envelope-encrypted (docs/ARCHITECTURE.md#secrets).

Each bundle gets its own data key from Vault transit; the bundle is sealed locally with AES-256-GCM
and the row keeps only the wrapped data key, the nonce and the ciphertext. The tenant is bound as
associated data, so a row copied or moved to another tenant fails authentication.

The safety property: `get` answers None only when the row is certainly absent. Every failure on the
way — Postgres, transit, a row that does not decrypt — raises BundleBackendUnavailable (or its
subclass BundleIntegrityError), because a caller that saw "no bundle" would init the guest and so
rotate a live tenant's identity.
"""

import json
import os
import uuid
from dataclasses import dataclass

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg_pool import ConnectionPool

from shared.adapters.vault_transit import TransitKeys
from shared.domain.errors import (
    BundleBackendUnavailable,
    BundleIntegrityError,
    RegistryUnavailable,
)
from shared.domain.secrets import Bundle
from shared.domain.tenants import TenantName

BUNDLE_FORMAT = "credbundle/v1"
NONCE_BYTES = 12
# Puts hold it shared, the last step of a key rotation exclusively (see rotate_bundle_key).
_ROTATION_LOCK = 0x646B726F  # "dkro"


class EnvelopeBundleStore:
    """BundleStore on the credential_bundles table. Keeps no key material on self."""

    def __init__(self, pool: ConnectionPool, transit: TransitKeys) -> None:
        self._pool = pool
        self._transit = transit

    def put(self, tenant: TenantName, bundle: Bundle, owner: uuid.UUID) -> bool:
        """Store the tenant's first bundle for `owner`, the instance holding its identity claim;
        False, storing nothing, when it already has one or `owner` no longer holds the claim.

        Insert-only: a tenant's identity is created once, and a racing loser must import the
        winner's bundle, not replace it. (Key rotation rewrites rows with UPDATEs of its own.)
        The claim is read FOR SHARE: offboarding deletes it first (`delete_identity`), so either
        it waits for this insert and deletes the bundle too, or this sees no claim and stores
        nothing, never a bundle for a tenant whose identity was removed meanwhile.
        """
        plaintext = _canonical_json(bundle)
        try:
            with self._pool.connection() as conn:
                # The data key is fetched while holding the lock, so that a key rotation's final
                # check cannot miss a row whose data key was wrapped before the rotation.
                conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (_ROTATION_LOCK,))
                held = conn.execute(
                    "SELECT 1 FROM identity_claims WHERE tenant = %s AND instance_id = %s"
                    " FOR SHARE",
                    (tenant, owner),
                ).fetchone()
                if held is None:
                    return False
                wrapped, nonce, ciphertext = _seal(self._transit, tenant, plaintext)
                cursor = conn.execute(
                    "INSERT INTO credential_bundles"
                    " (tenant, format, wrapped_key, nonce, ciphertext) VALUES (%s, %s, %s, %s, %s)"
                    " ON CONFLICT (tenant) DO NOTHING",
                    (tenant, BUNDLE_FORMAT, wrapped, nonce, ciphertext),
                )
                return cursor.rowcount == 1
        except psycopg.Error as exc:
            raise _postgres_unavailable(exc, "storing the bundle", tenant) from None

    def get(self, tenant: TenantName) -> Bundle | None:
        """None only when there is certainly no row; every failure raises (see module doc)."""
        try:
            with self._pool.connection() as conn:
                row = conn.execute(
                    "SELECT format, wrapped_key, nonce, ciphertext FROM credential_bundles"
                    " WHERE tenant = %s",
                    (tenant,),
                ).fetchone()
        except psycopg.Error as exc:
            raise _postgres_unavailable(exc, "reading the bundle", tenant) from None
        if row is None:
            return None
        stored_format, wrapped, nonce, ciphertext = row
        if stored_format != BUNDLE_FORMAT:
            raise BundleBackendUnavailable(
                "the stored bundle has a format this version cannot read", tenant=tenant
            )
        plaintext = _unseal(self._transit, tenant, wrapped, bytes(nonce), bytes(ciphertext))
        try:
            data = json.loads(plaintext)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise BundleIntegrityError("the stored bundle is not a JSON object", tenant=tenant)
        return Bundle(data)

    def delete(self, tenant: TenantName) -> None:
        """Remove the tenant's bundle and identity claim: its next VM starts a new identity."""
        try:
            delete_identity(self._pool, tenant)
        except psycopg.Error as exc:
            raise _postgres_unavailable(exc, "deleting the bundle", tenant) from None

    # --- the identity claim (docs/ARCHITECTURE.md#invariants) -------------------------------------

    def claim(self, tenant: TenantName, instance_id: uuid.UUID) -> tuple[uuid.UUID, bool]:
        """Claim the creation of the tenant's identity; returns (owner, claimed by this call).

        Insert-only: the owner is whoever inserted first, and stays so until `release`,
        `take_over` or `delete`. Only the owner may init a guest for the tenant.
        """
        try:
            with self._pool.connection() as conn:
                # Twice at most: a claim released between the insert and the read is gone.
                for _ in range(2):
                    row = conn.execute(
                        "INSERT INTO identity_claims (tenant, instance_id) VALUES (%s, %s)"
                        " ON CONFLICT (tenant) DO NOTHING RETURNING instance_id",
                        (tenant, instance_id),
                    ).fetchone()
                    if row is not None:
                        return row[0], True
                    row = conn.execute(
                        "SELECT instance_id FROM identity_claims WHERE tenant = %s", (tenant,)
                    ).fetchone()
                    if row is not None:
                        return row[0], False
                    conn.commit()
        except psycopg.Error as exc:
            raise _postgres_unavailable(exc, "claiming the identity", tenant) from None
        raise BundleBackendUnavailable("the identity claim kept changing; retry", tenant=tenant)

    def pending_claim(self, tenant: TenantName) -> uuid.UUID | None:
        """The instance creating the tenant's identity while none is stored yet, if any."""
        return _pending_claim(self._pool, tenant)

    def take_over(self, tenant: TenantName, old_owner: uuid.UUID, new_owner: uuid.UUID) -> bool:
        """Move an abandoned claim to `new_owner`, if `old_owner` still holds it and no bundle
        was stored (so no identity was kept); whether it moved."""
        try:
            with self._pool.connection() as conn:
                cursor = conn.execute(
                    "UPDATE identity_claims c SET instance_id = %s, claimed_at = now()"
                    " WHERE tenant = %s AND instance_id = %s AND NOT EXISTS"
                    " (SELECT 1 FROM credential_bundles b WHERE b.tenant = c.tenant)",
                    (new_owner, tenant, old_owner),
                )
                return cursor.rowcount == 1
        except psycopg.Error as exc:
            raise _postgres_unavailable(exc, "taking over the identity claim", tenant) from None

    def release(self, tenant: TenantName, owner: uuid.UUID) -> None:
        """Drop `owner`'s claim while no bundle is stored: it made no identity that survives."""
        try:
            with self._pool.connection() as conn:
                conn.execute(
                    "DELETE FROM identity_claims c WHERE tenant = %s AND instance_id = %s AND NOT"
                    " EXISTS (SELECT 1 FROM credential_bundles b WHERE b.tenant = c.tenant)",
                    (tenant, owner),
                )
        except psycopg.Error as exc:
            raise _postgres_unavailable(exc, "releasing the identity claim", tenant) from None


def _pending_claim(pool: ConnectionPool, tenant: TenantName) -> uuid.UUID | None:
    try:
        with pool.connection() as conn:
            row = conn.execute(
                "SELECT instance_id FROM identity_claims c WHERE tenant = %s AND NOT EXISTS"
                " (SELECT 1 FROM credential_bundles b WHERE b.tenant = c.tenant)",
                (tenant,),
            ).fetchone()
    except psycopg.Error as exc:
        raise _postgres_unavailable(exc, "reading the identity claim", tenant) from None
    return row[0] if row else None


class PostgresIdentityClaims:
    """Only reads the identity claims (reconcile): Postgres alone, no transit key."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def pending_claim(self, tenant: TenantName) -> uuid.UUID | None:
        return _pending_claim(self._pool, tenant)


def delete_identity(pool: ConnectionPool, tenant: TenantName) -> None:
    """Delete the tenant's bundle and claim in one transaction; raises psycopg errors.

    Needs no key, so offboarding can call it without access to transit.
    """
    with pool.connection() as conn:
        # The claim first: its row lock orders this after, or before, a `put` in flight.
        conn.execute("DELETE FROM identity_claims WHERE tenant = %s", (tenant,))
        conn.execute("DELETE FROM credential_bundles WHERE tenant = %s", (tenant,))


class PostgresBundleRemover:
    """Only deletes bundles (offboarding): Postgres alone, no transit key."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def delete(self, tenant: TenantName) -> None:
        try:
            delete_identity(self._pool, tenant)
        except psycopg.Error as exc:
            raise RegistryUnavailable(
                f"Postgres failed deleting the bundle ({type(exc).__name__}); retry",
                tenant=tenant,
            ) from None


def _canonical_json(bundle: Bundle) -> bytes:
    return json.dumps(
        bundle.reveal(), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def _associated_data(tenant: TenantName) -> bytes:
    # Length-prefixed, so that no (format, tenant) pair can be spelt as another one.
    parts = (BUNDLE_FORMAT.encode(), tenant.encode())
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


# The plaintext data key lives only in the locals of these two functions: nothing else holds a
# reference once they return. Python cannot scrub the memory (bytes are immutable and Vault's JSON
# answer held the key too); dropping every reference at once is as far as it goes.
def _seal(transit: TransitKeys, tenant: TenantName, plaintext: bytes) -> tuple[str, bytes, bytes]:
    key, wrapped = transit.data_key()
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, _associated_data(tenant))
    return wrapped, nonce, ciphertext


def _unseal(
    transit: TransitKeys, tenant: TenantName, wrapped: str, nonce: bytes, ciphertext: bytes
) -> bytes:
    key = transit.unwrap(wrapped)
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, _associated_data(tenant))
    except (InvalidTag, ValueError):  # ValueError: a key or nonce of the wrong length
        raise BundleIntegrityError(
            "the stored bundle does not decrypt for this tenant (tampered with or moved)",
            tenant=tenant,
        ) from None


def _postgres_unavailable(exc: Exception, doing: str, tenant: str) -> BundleBackendUnavailable:
    return BundleBackendUnavailable(
        f"Postgres failed {doing} ({type(exc).__name__}); retry later", tenant=tenant
    )


# --- key rotation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleKeyRotation:
    key_version: int  # the transit key version every bundle is wrapped under now
    rewrapped: int  # rows this run re-wrapped
    changed_meanwhile: int  # rows a concurrent put or delete replaced first (already current)


def rotate_bundle_key(
    pool: ConnectionPool, transit: TransitKeys, *, batch_size: int = 100
) -> BundleKeyRotation:
    """Rotate the transit key, re-wrap every bundle's data key, then retire the old key versions.

    Safe to re-run after a failure at any point: the minimum decryption version is raised only
    after a check, taken under the exclusive rotation lock, that no row is wrapped under an older
    version. Any rewrap failure aborts the run before that, leaving every old version readable.
    """
    transit.rotate()
    version = transit.latest_version()
    # Transit's wrapped form is "vault:v<N>:<base64>"; the colon keeps v1 from matching v10.
    current = f"vault:v{version}:"
    rewrapped = changed = 0
    try:
        after = ""  # tenant names are never empty, so every one sorts after this
        while True:
            with pool.connection() as conn:
                rows = _stale_rows(conn, current, after, batch_size)
                done, missed = _rewrap_rows(conn, transit, rows)
            rewrapped, changed = rewrapped + done, changed + missed
            if len(rows) < batch_size:
                break
            after = rows[-1][0]
        with pool.connection() as conn:
            # Granted once every put holding the shared lock has committed, and any put whose
            # data key predates the rotation was holding it. Once the stale rows found here are
            # re-wrapped, none is left and none can appear: later puts get new-version keys.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ROTATION_LOCK,))
            done, missed = _rewrap_rows(conn, transit, _stale_rows(conn, current, "", None))
        rewrapped, changed = rewrapped + done, changed + missed
    except psycopg.Error as exc:
        raise BundleBackendUnavailable(
            f"Postgres failed during bundle key rotation ({type(exc).__name__}); run it again"
        ) from None
    transit.set_min_decryption_version(version)
    return BundleKeyRotation(key_version=version, rewrapped=rewrapped, changed_meanwhile=changed)


def _stale_rows(
    conn: psycopg.Connection, current: str, after: str, limit: int | None
) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT tenant, wrapped_key FROM credential_bundles"
        " WHERE tenant > %s AND NOT starts_with(wrapped_key, %s) ORDER BY tenant LIMIT %s",
        (after, current, limit),
    ).fetchall()


def _rewrap_rows(
    conn: psycopg.Connection, transit: TransitKeys, rows: list[tuple[str, str]]
) -> tuple[int, int]:
    """Re-wrap each row's data key, comparing on the old wrapped value; returns (done, missed)."""
    done = 0
    for tenant, wrapped in rows:
        # updated_at is left alone: it dates the bundle, which a rewrap does not change.
        cursor = conn.execute(
            "UPDATE credential_bundles SET wrapped_key = %s WHERE tenant = %s AND wrapped_key = %s",
            (transit.rewrap(wrapped), tenant, wrapped),
        )
        done += cursor.rowcount
    return done, len(rows) - done
