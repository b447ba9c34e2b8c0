"""A third server for bench/gateway.py: the real gateway with its Postgres read taken out.

Everything the gateway does for `GET /instances` is here (bearer token check, request id, the log
line, the metrics, the query's validation, the body and headers, the same gunicorn settings) except
the read: its registry answers `list_json` from memory, each distinct page read from Postgres once,
on its first request. Served beside the gateway and the bare app under the same load, it shows what
the read itself costs (one prepared statement and 30 KB from Postgres per request) and what the rest
of the gateway costs. It is a measuring instrument, never a way to run the gateway: its pages go
stale as soon as a row changes.
"""

from collections.abc import Iterable

from flask import Flask
from psycopg_pool import ConnectionPool

from services.api.app import create_app
from shared.adapters.db import make_pool, make_read_pool
from shared.adapters.registry import PostgresFleetRegistry
from shared.domain.lifecycle import Status
from shared.domain.tenants import TenantName
from shared.logs import configure_logging
from shared.settings import load_settings

PageKey = tuple[TenantName | None, tuple[Status, ...] | None, int, str | None]


class PagesFromMemory(PostgresFleetRegistry):
    """The registry, with each distinct page of `list_json` read once and then kept."""

    def __init__(self, pool: ConnectionPool, *, read_pool: ConnectionPool | None = None) -> None:
        super().__init__(pool, read_pool=read_pool)
        self._kept: dict[PageKey, tuple[str, str | None]] = {}

    def list_json(
        self,
        *,
        tenant: TenantName | None = None,
        statuses: Iterable[Status] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[str, str | None]:
        chosen = tuple(statuses) if statuses is not None else None
        key = (tenant, chosen, limit, cursor)
        page = self._kept.get(key)
        if page is None:
            page = super().list_json(tenant=tenant, statuses=chosen, limit=limit, cursor=cursor)
            self._kept[key] = page
        return page


def make_app() -> Flask:
    """The app, for gunicorn: `bench.gateway_without_read:make_app()`."""
    settings = load_settings(service="api")
    configure_logging("api", settings.log_level)
    registry = PagesFromMemory(
        make_pool(settings.database_url), read_pool=make_read_pool(settings.database_url)
    )
    return create_app(settings, registry=registry)
