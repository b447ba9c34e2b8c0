"""The tenant directory on Postgres: one `tenants` row per tenant that ever onboarded.

It records onboarding state only (times and the Vault version); the secrets stay in Vault. The
onboarding service writes it after each Vault change, the gateway reads it to refuse provisioning
for tenants that are not onboarded.
"""

# Lazy annotations: inside the class, `list` names the method; `list[...]` must stay the builtin.
from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from shared.adapters.db import Row, pooled_cursor
from shared.domain.tenant_records import TenantRecord
from shared.domain.tenants import TenantName

_COLUMNS = sql.SQL(", ").join(
    sql.Identifier(name)
    for name in ("name", "onboarded_at", "updated_at", "offboarded_at", "secrets_version")
)


class PostgresTenantDirectory:
    """Raises RegistryUnavailable when the database cannot be reached."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def record_onboarded(self, tenant: TenantName, version: int) -> TenantRecord:
        """The tenant's secrets are stored at `version`: it is onboarded from now on.

        Re-onboarding keeps the original onboarded_at. Two writers recording out of order (v3
        committed before v2) cannot move the version backwards; after an offboarding the version
        column is empty, so the restarted Vault numbering (1, 2...) is taken as it comes.
        """
        if type(version) is not int or version < 1:
            raise ValueError("version must be a positive integer")
        with self._cursor() as cur:
            row = cur.execute(
                sql.SQL(
                    "INSERT INTO tenants AS t (name, onboarded_at, updated_at, secrets_version)"
                    " VALUES (%s, now(), now(), %s)"
                    " ON CONFLICT (name) DO UPDATE SET"
                    " onboarded_at = COALESCE(t.onboarded_at, now()),"
                    " updated_at = now(),"
                    " secrets_version = GREATEST(t.secrets_version, EXCLUDED.secrets_version)"
                    " RETURNING {}"
                ).format(_COLUMNS),
                (tenant, version),
            ).fetchone()
        # An upsert with RETURNING always gives a row.
        assert row is not None
        return _record(row)

    def record_offboarded(self, tenant: TenantName) -> TenantRecord | None:
        """The tenant's secrets are gone. None if the directory never knew the tenant.

        No row is created for an unknown name: a typo in an offboarding request must not add a
        tenant to the directory.
        """
        with self._cursor() as cur:
            row = cur.execute(
                sql.SQL(
                    "UPDATE tenants SET onboarded_at = NULL, offboarded_at = now(),"
                    " updated_at = now(), secrets_version = NULL"
                    " WHERE name = %s RETURNING {}"
                ).format(_COLUMNS),
                (tenant,),
            ).fetchone()
        return _record(row) if row else None

    def get(self, tenant: TenantName) -> TenantRecord | None:
        with self._cursor() as cur:
            row = cur.execute(
                sql.SQL("SELECT {} FROM tenants WHERE name = %s").format(_COLUMNS),
                (tenant,),
            ).fetchone()
        return _record(row) if row else None

    def list(self) -> list[TenantRecord]:
        """Every tenant the directory knows, onboarded or not, by name."""
        with self._cursor() as cur:
            rows = cur.execute(
                sql.SQL("SELECT {} FROM tenants ORDER BY name").format(_COLUMNS)
            ).fetchall()
        return [_record(row) for row in rows]

    def is_onboarded(self, tenant: TenantName) -> bool:
        record = self.get(tenant)
        return record is not None and record.onboarded

    def _cursor(self) -> contextlib.AbstractContextManager[psycopg.Cursor[Row]]:
        return pooled_cursor(self._pool, "the tenant directory database is unreachable")


def _record(row: Row) -> TenantRecord:
    return TenantRecord(
        name=TenantName.stored(row["name"]),
        onboarded_at=_utc(row["onboarded_at"]),
        updated_at=_utc(row["updated_at"]),
        offboarded_at=_utc(row["offboarded_at"]),
        secrets_version=row["secrets_version"],
    )


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None
