"""Builds each process's objects from settings: one builder per process, one typed container each.

    build_gateway       the HTTP gateway (services/api)
    build_onboarding    the onboarding service (services/onboarding)
    build_provisioner   a provisioner worker process (services/provisioner), after fork
    build_reconciler    a reconciler worker process (services/reconciler), after fork

The entry points only call these. Nothing here does I/O at import, and the adapters
are imported inside the builders: celery-beat loads the reconciler's entry point and needs neither
Postgres nor the cloud SDK. The workers build their container per process (`PerProcess`), after
the pool has forked: gRPC objects must not cross a fork.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from shared.domain.errors import CloudError
from shared.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

    from shared.adapters.fleet_stats import FleetStatsSource
    from shared.adapters.sessions import PostgresOperatorSessions
    from shared.celery_app import GatewayTasks
    from shared.ports import (
        BundleRemover,
        BundleStore,
        Compute,
        FleetRegistry,
        GuestAgent,
        IdentityClaims,
        Locks,
        ReconcileRuns,
        TaskDispatcher,
        TenantDirectory,
        TenantSecretStore,
    )
    from shared.service_layer.fleet import FleetService
    from shared.service_layer.invites import Invites
    from shared.service_layer.onboarding import Onboarding
    from shared.service_layer.pipeline import Pipeline
    from shared.service_layer.waits import OpenWaits

log = logging.getLogger(__name__)

# /ready answers within a few seconds even when a dependency black-holes packets. libpq does not
# honour a connect timeout under 2 s.
PROBE_TIMEOUT_SECS = 2


# --- the gateway ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayServices:
    """Everything the gateway's views use (services/api keeps it in `app.extensions["dark"]`)."""

    registry: FleetRegistry
    tenants: TenantDirectory
    runs: ReconcileRuns
    fleet: FleetService
    guest: GuestAgent
    tasks: GatewayTasks  # a reconcile run now, and task states: all the gateway asks of Celery
    stats: FleetStatsSource  # /metrics' fleet figures: cached, on a connection of their own
    sessions: PostgresOperatorSessions  # the dashboard's sessions
    agent_port: int
    probes: dict[str, Callable[[], None]]
    invites: Invites
    onboarding_page_url: str  # what invite links start with
    waits: OpenWaits  # GET /instances/<tenant>/<id>/wait calls open in this process


def build_gateway(
    settings: Settings,
    *,
    registry: FleetRegistry | None = None,
    fleet: FleetService | None = None,
    guest: GuestAgent | None = None,
    celery_app: Celery | None = None,
    tenants: TenantDirectory | None = None,
    stats: FleetStatsSource | None = None,
    invites: Invites | None = None,
) -> GatewayServices:
    """The gateway's objects. Tests hand in a registry on their own pool, or a Celery app on their
    own Redis DB; whatever is not passed is built from the settings."""
    from shared.adapters.db import make_pool, make_read_pool
    from shared.adapters.fleet_stats import CachedFleetStats, PostgresFleetStats
    from shared.adapters.guest import HttpGuestAgent
    from shared.adapters.invites import PostgresInviteStore
    from shared.adapters.registry import PostgresFleetRegistry
    from shared.adapters.runs import PostgresReconcileRuns
    from shared.adapters.sessions import PostgresOperatorSessions
    from shared.adapters.tenants import PostgresTenantDirectory
    from shared.celery_app import CeleryDispatcher, GatewayTasks, make_celery
    from shared.service_layer.fleet import FleetService
    from shared.service_layer.invites import Invites
    from shared.service_layer.waits import OpenWaits

    celery_app = celery_app or make_celery(settings)
    pool = make_pool(settings.database_url)
    # The list's reads go through autocommit connections of their own (db.make_read_pool).
    registry = registry or PostgresFleetRegistry(
        pool, read_pool=make_read_pool(settings.database_url)
    )
    tenants = tenants or PostgresTenantDirectory(pool)
    if fleet is None:
        fleet = FleetService(
            registry,
            CeleryDispatcher(celery_app),
            max_instances_per_tenant=settings.max_instances_per_tenant,
            tenants=tenants,
        )
    return GatewayServices(
        registry=registry,
        tenants=tenants,
        runs=PostgresReconcileRuns(pool),
        fleet=fleet,
        guest=guest or HttpGuestAgent.from_settings(settings),
        tasks=GatewayTasks(celery_app),
        # Not the pool: a scrape must never hold a connection the API's requests wait for.
        stats=stats or CachedFleetStats(PostgresFleetStats(settings.database_url)),
        sessions=PostgresOperatorSessions(pool),
        agent_port=settings.agent_port,
        probes={
            "postgres": _postgres_probe(settings.database_url),
            "redis": _redis_probe(celery_app),
        },
        invites=invites or Invites(PostgresInviteStore(pool), ttl_secs=settings.invite_ttl_secs),
        onboarding_page_url=settings.onboarding_page_url,
        waits=OpenWaits(settings.max_open_waits),
    )


def _postgres_probe(database_url: str) -> Callable[[], None]:
    import psycopg

    def probe() -> None:
        # A connection of its own: readiness says whether Postgres answers, not whether the
        # registry's pool happens to hold a live connection.
        with psycopg.connect(
            database_url,
            connect_timeout=PROBE_TIMEOUT_SECS,
            options=f"-c statement_timeout={PROBE_TIMEOUT_SECS * 1000}",
        ) as conn:
            conn.execute("SELECT 1")

    return probe


def _redis_probe(celery_app: Celery) -> Callable[[], None]:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from shared.celery_app import broker_client

    # The broker the tasks go to, reached as Celery reaches it (TLS, Sentinels); built once,
    # connects lazily, and never retries: a probe that retries with backoff answers late exactly
    # when it matters.
    client = broker_client(
        celery_app,
        socket_connect_timeout=PROBE_TIMEOUT_SECS,
        socket_timeout=PROBE_TIMEOUT_SECS,
        retry=Retry(NoBackoff(), 0),
    )

    def probe() -> None:
        client.ping()

    return probe


# --- the onboarding service -----------------------------------------------------------------------


@dataclass(frozen=True)
class OnboardingServices:
    onboarding: Onboarding
    invites: Invites


def build_onboarding(
    settings: Settings,
    *,
    secrets: TenantSecretStore | None = None,
    tenants: TenantDirectory | None = None,
    fleet_counts: FleetRegistry | None = None,
    bundles: BundleRemover | None = None,
    invites: Invites | None = None,
) -> OnboardingServices:
    """The onboarding service's objects; tests hand in adapters on their own pool or OpenBao."""
    from shared.adapters.bundles import PostgresBundleRemover
    from shared.adapters.db import make_lock_pool, make_pool
    from shared.adapters.invites import PostgresInviteStore
    from shared.adapters.locks import PostgresLocks
    from shared.adapters.registry import PostgresFleetRegistry
    from shared.adapters.tenants import PostgresTenantDirectory
    from shared.adapters.vault_client import vault_client
    from shared.adapters.vault_kv import HvacTenantSecrets
    from shared.service_layer.invites import Invites
    from shared.service_layer.onboarding import Onboarding

    if secrets is None:
        secrets = HvacTenantSecrets(vault_client(settings), kv_mount=settings.vault_kv_mount)
    if tenants is None or fleet_counts is None or bundles is None or invites is None:
        pool = make_pool(settings.database_url)
        tenants = tenants if tenants is not None else PostgresTenantDirectory(pool)
        fleet_counts = fleet_counts if fleet_counts is not None else PostgresFleetRegistry(pool)
        # Deleting a bundle needs Postgres only: onboarding gets no transit key.
        bundles = bundles if bundles is not None else PostgresBundleRemover(pool)
        if invites is None:
            invites = Invites(PostgresInviteStore(pool), ttl_secs=settings.invite_ttl_secs)
    # A lock lives on a connection of its own, never one of the queries' pool.
    locks = PostgresLocks(make_lock_pool(settings.database_url))
    return OnboardingServices(
        onboarding=Onboarding(secrets, tenants, fleet_counts, bundles, locks), invites=invites
    )


# --- the provisioner ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProvisionerServices:
    registry: FleetRegistry
    compute: Compute
    guest: GuestAgent
    secrets: TenantSecretStore
    bundles: BundleStore
    locks: Locks
    pipeline: Pipeline


def build_provisioner(
    settings: Settings, *, celery_app: Celery | None = None
) -> ProvisionerServices:
    """One provisioner process's objects (a pool child: called after fork). `celery_app` is the
    entry point's app, which the pipeline hands freed capacity over through (it wakes the next
    waiters); built from the settings if not given."""
    from shared.adapters.bundles import EnvelopeBundleStore
    from shared.adapters.capacity import PostgresOperationBudget
    from shared.adapters.db import make_lock_pool, make_pool
    from shared.adapters.guest import HttpGuestAgent
    from shared.adapters.locks import PostgresLocks
    from shared.adapters.registry import PostgresFleetRegistry
    from shared.adapters.vault_client import vault_client
    from shared.adapters.vault_kv import HvacTenantSecrets
    from shared.adapters.vault_transit import TransitKeys
    from shared.adapters.waits import PostgresWaitHistory
    from shared.celery_app import CeleryDispatcher, make_celery
    from shared.service_layer.pipeline import Pipeline
    from shared.service_layer.polling import Waits

    pool = make_pool(settings.database_url, max_size=6)
    vault = vault_client(settings)
    registry = PostgresFleetRegistry(pool)
    compute = _warm_compute(settings, fatal=False)
    guest = HttpGuestAgent.from_settings(settings)
    secrets = HvacTenantSecrets(vault, kv_mount=settings.vault_kv_mount)
    bundles = EnvelopeBundleStore(
        pool,
        TransitKeys(vault, mount=settings.vault_transit_mount, key_name=settings.bundle_key_name),
    )
    locks = PostgresLocks(make_lock_pool(settings.database_url))
    return ProvisionerServices(
        registry=registry,
        compute=compute,
        guest=guest,
        secrets=secrets,
        bundles=bundles,
        locks=locks,
        pipeline=Pipeline(
            registry=registry,
            compute=compute,
            guest=guest,
            secrets=secrets,
            bundles=bundles,
            locks=locks,
            capacity=PostgresOperationBudget(pool, settings.yc_max_concurrent_operations),
            settings=settings,
            waits=Waits(PostgresWaitHistory(pool), adaptive=settings.adaptive_waits),
            dispatcher=CeleryDispatcher(celery_app or make_celery(settings)),
        ),
    )


@contextlib.contextmanager
def short_lived_registry(settings: Settings) -> Iterator[FleetRegistry]:
    """A registry on a one-connection pool closed on exit: for the provisioner's parent process,
    which forks pool children and so must hold no long-lived clients (never the cloud SDK)."""
    from shared.adapters.db import make_pool
    from shared.adapters.registry import PostgresFleetRegistry

    with make_pool(settings.database_url, max_size=1) as pool:
        yield PostgresFleetRegistry(pool)


# --- the reconciler -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReconcilerServices:
    registry: FleetRegistry
    compute: Compute
    runs: ReconcileRuns
    locks: Locks
    claims: IdentityClaims
    fleet: FleetService  # respawns, and re-sends the messages of rows whose chain is gone


def build_reconciler(settings: Settings, *, celery_app: Celery | None = None) -> ReconcilerServices:
    """One reconciler process's objects (a pool child: called after fork). `celery_app` is the
    entry point's app, which the dispatcher sends through; built from the settings if not given."""
    from shared.adapters.bundles import PostgresIdentityClaims
    from shared.adapters.db import make_lock_pool, make_pool
    from shared.adapters.locks import PostgresLocks
    from shared.adapters.registry import PostgresFleetRegistry
    from shared.adapters.runs import PostgresReconcileRuns
    from shared.adapters.tenants import PostgresTenantDirectory
    from shared.celery_app import CeleryDispatcher, make_celery
    from shared.service_layer.fleet import FleetService

    # Queries only: the locks (the run's, an instance's) hold connections of their own.
    pool = make_pool(settings.database_url, max_size=4)
    registry = PostgresFleetRegistry(pool)
    dispatcher: TaskDispatcher = CeleryDispatcher(celery_app or make_celery(settings))
    return ReconcilerServices(
        registry=registry,
        compute=_warm_compute(settings, fatal=True),
        runs=PostgresReconcileRuns(pool),
        locks=PostgresLocks(make_lock_pool(settings.database_url)),
        claims=PostgresIdentityClaims(pool),
        fleet=FleetService(
            registry,
            dispatcher,
            max_instances_per_tenant=settings.max_instances_per_tenant,
            tenants=PostgresTenantDirectory(pool),
        ),
    )


# --- shared ---------------------------------------------------------------------------------------


def _warm_compute(settings: Settings, *, fatal: bool) -> Compute:
    from shared.adapters.yc import YcCompute

    compute = YcCompute.from_settings(settings)
    try:
        # Endpoint discovery now, before threads share the SDK's unlocked caches.
        compute.warm()
    except CloudError as exc:
        if fatal:
            raise
        # A cloud outage at start-up must not keep the provisioner from starting (the first task
        # retries it).
        log.warning("could not reach the cloud at start-up: %s", exc)
    return compute


T = TypeVar("T")


class PerProcess(Generic[T]):
    """A lazily built value that is rebuilt in a forked child (gRPC objects must not cross fork)."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._pid: int | None = None
        self._value: T | None = None

    def get(self) -> T:
        if self._pid != os.getpid():
            self._value = self._factory()
            self._pid = os.getpid()
        return cast(T, self._value)
