"""Invites on Postgres (docs/ARCHITECTURE.md#invites): the `invites` table, digests only.

A tenant's current invite is its row with `revoked_at IS NULL`; a partial unique index allows one.
Issuing takes a transaction-level advisory lock on the tenant first, so two concurrent issues run
one after the other: the second revokes the first's row and inserts its own, and exactly one stays
current. The lock ends with the transaction, so nothing is left on the pooled connection.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import psycopg
from psycopg_pool import ConnectionPool

from shared.adapters.db import Row, pooled_cursor
from shared.domain.invites import Invite
from shared.domain.tenants import TenantName

_INSERT = (
    "INSERT INTO invites (tenant, token_hash, expires_at) VALUES (%s, %s, %s)"
    " RETURNING tenant, created_at, expires_at, used_at"
)
_FIND = (
    "SELECT tenant, created_at, expires_at, used_at FROM invites"
    " WHERE token_hash = %s AND revoked_at IS NULL"
)
_CURRENT = "SELECT tenant, created_at, expires_at, used_at FROM invites WHERE revoked_at IS NULL"
# The advisory-lock namespace for invites: a key of its own, apart from the other locks' keys.
_LOCK_PREFIX = "dark-invite:"


class PostgresInviteStore:
    """Raises RegistryUnavailable when the database cannot be reached."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def issue(self, tenant: TenantName, digest: bytes, expires_at: datetime) -> Invite:
        with self._cursor() as cur:
            cur.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_LOCK_PREFIX + tenant,)
            )
            cur.execute(
                "UPDATE invites SET revoked_at = now() WHERE tenant = %s AND revoked_at IS NULL",
                (tenant,),
            )
            row = cur.execute(_INSERT, (tenant, digest, expires_at)).fetchone()
        assert row is not None  # an INSERT ... RETURNING gives its row
        return _invite(row)

    def revoke(self, tenant: TenantName) -> bool:
        with self._cursor() as cur:
            cur.execute(
                "UPDATE invites SET revoked_at = now() WHERE tenant = %s AND revoked_at IS NULL",
                (tenant,),
            )
            return cur.rowcount > 0

    def find(self, digest: bytes) -> Invite | None:
        with self._cursor() as cur:
            row = cur.execute(_FIND, (digest,)).fetchone()
        return _invite(row) if row else None

    def mark_used(self, digest: bytes) -> None:
        with self._cursor() as cur:
            cur.execute(
                "UPDATE invites SET used_at = now()"
                " WHERE token_hash = %s AND revoked_at IS NULL AND used_at IS NULL",
                (digest,),
            )

    def current(self) -> dict[TenantName, Invite]:
        with self._cursor() as cur:
            rows = cur.execute(_CURRENT).fetchall()
        return {invite.tenant: invite for invite in map(_invite, rows)}

    def _cursor(self) -> contextlib.AbstractContextManager[psycopg.Cursor[Row]]:
        return pooled_cursor(self._pool, "the invite registry database is unreachable")


def _invite(row: Row) -> Invite:
    return Invite(
        tenant=TenantName.stored(row["tenant"]),
        created_at=row["created_at"].astimezone(UTC),
        expires_at=row["expires_at"].astimezone(UTC),
        used_at=row["used_at"].astimezone(UTC) if row["used_at"] is not None else None,
    )
