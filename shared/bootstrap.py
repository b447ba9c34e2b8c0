"""Builds the adapters from settings. Called once per process, after fork
(docs/ARCHITECTURE.md#conventions)."""

import logging
import os
from dataclasses import dataclass

from shared.adapters.db import make_lock_pool, make_pool
from shared.domain.errors import CloudError
from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    pool: object
    registry: object
    compute: object
    guest: object
    secrets: object
    bundles: object
    locks: object


def build_worker_context(settings: Settings) -> WorkerContext:
    from shared.adapters.bundles import EnvelopeBundleStore
    from shared.adapters.guest import HttpGuestAgent
    from shared.adapters.locks import PostgresLocks
    from shared.adapters.registry import PostgresFleetRegistry
    from shared.adapters.vault_client import vault_client
    from shared.adapters.vault_kv import HvacTenantSecrets
    from shared.adapters.vault_transit import TransitKeys
    from shared.adapters.yc import YcCompute

    pool = make_pool(settings.database_url, max_size=6)
    vault = vault_client(settings)
    compute = YcCompute.from_settings(settings)
    try:
        # Endpoint discovery now, before threads share the SDK's unlocked caches; a cloud outage
        # at start-up must not keep the worker from starting (the first task retries it).
        compute.warm()
    except CloudError as exc:
        log.warning("could not reach the cloud at start-up: %s", exc)
    return WorkerContext(
        settings=settings,
        pool=pool,
        registry=PostgresFleetRegistry(pool),
        compute=compute,
        guest=HttpGuestAgent.from_settings(settings),
        secrets=HvacTenantSecrets(vault, kv_mount=settings.vault_kv_mount),
        bundles=EnvelopeBundleStore(
            pool,
            TransitKeys(
                vault, mount=settings.vault_transit_mount, key_name=settings.bundle_key_name
            ),
        ),
        locks=PostgresLocks(make_lock_pool(settings.database_url)),
    )


class PerProcess:
    """A lazily built value that is rebuilt in a forked child (gRPC objects must not cross fork)."""

    def __init__(self, factory) -> None:
        self._factory = factory
        self._pid: int | None = None
        self._value = None

    def get(self):
        if self._pid != os.getpid():
            self._value = self._factory()
            self._pid = os.getpid()
        return self._value
