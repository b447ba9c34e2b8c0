"""Every fake in tests/fakes.py, and every adapter, implements its port: it has each method the
Protocol declares, taking the same arguments the same way.

The type checker sees the same thing from the assignments in `_statically`; the test below is the
check at run time, so that a port that grows a method fails here until its fake grows it too.
"""

import inspect
import typing

import pytest
from psycopg_pool import ConnectionPool

from shared import ports
from shared.adapters.bundles import (
    EnvelopeBundleStore,
    PostgresBundleRemover,
    PostgresIdentityClaims,
)
from shared.adapters.capacity import PostgresOperationBudget
from shared.adapters.guest import HttpGuestAgent
from shared.adapters.invites import PostgresInviteStore
from shared.adapters.locks import PostgresLocks
from shared.adapters.registry import PostgresFleetRegistry
from shared.adapters.runs import PostgresReconcileRuns
from shared.adapters.tenants import PostgresTenantDirectory
from shared.adapters.vault_kv import HvacTenantSecrets
from shared.adapters.waits import PostgresWaitHistory
from shared.adapters.yc import YcCompute
from shared.celery_app import CeleryDispatcher
from tests.fakes import (
    FakeClaims,
    FakeCompute,
    FakeDispatcher,
    FakeLocks,
    FakeOperationBudget,
    FakeRegistry,
    FakeRuns,
    FakeTenants,
    FakeWaitHistory,
)

FAKES = [
    (ports.FleetRegistry, FakeRegistry),
    (ports.Compute, FakeCompute),
    (ports.ReconcileRuns, FakeRuns),
    (ports.Locks, FakeLocks),
    (ports.TenantDirectory, FakeTenants),
    (ports.IdentityClaims, FakeClaims),
    (ports.TaskDispatcher, FakeDispatcher),
    (ports.OperationBudget, FakeOperationBudget),
    (ports.WaitHistory, FakeWaitHistory),
]
ADAPTERS = [
    (ports.FleetRegistry, PostgresFleetRegistry),
    (ports.Compute, YcCompute),
    (ports.GuestAgent, HttpGuestAgent),
    (ports.TenantSecretStore, HvacTenantSecrets),
    (ports.BundleStore, EnvelopeBundleStore),
    (ports.IdentityClaims, PostgresIdentityClaims),
    (ports.BundleRemover, PostgresBundleRemover),
    (ports.Locks, PostgresLocks),
    (ports.ReconcileRuns, PostgresReconcileRuns),
    (ports.TenantDirectory, PostgresTenantDirectory),
    (ports.TaskDispatcher, CeleryDispatcher),
    (ports.InviteStore, PostgresInviteStore),
    (ports.OperationBudget, PostgresOperationBudget),
    (ports.WaitHistory, PostgresWaitHistory),
]


def _statically(pool: ConnectionPool) -> None:
    """Never called: what the type checker verifies (each right side is assignable to its port)."""
    registry: ports.FleetRegistry = FakeRegistry()
    compute: ports.Compute = FakeCompute()
    runs: ports.ReconcileRuns = FakeRuns()
    locks: ports.Locks = FakeLocks()
    tenants: ports.TenantDirectory = FakeTenants()
    claims: ports.IdentityClaims = FakeClaims()
    dispatcher: ports.TaskDispatcher = FakeDispatcher()
    locks = PostgresLocks(pool)
    runs = PostgresReconcileRuns(pool)
    tenants = PostgresTenantDirectory(pool)
    claims = PostgresIdentityClaims(pool)
    remover: ports.BundleRemover = PostgresBundleRemover(pool)
    invites: ports.InviteStore = PostgresInviteStore(pool)
    budget: ports.OperationBudget = FakeOperationBudget(FakeRegistry())
    budget = PostgresOperationBudget(pool, 15)
    waits: ports.WaitHistory = FakeWaitHistory()
    waits = PostgresWaitHistory(pool)
    del budget, registry, compute, runs, locks, tenants, claims, dispatcher, remover, invites
    del waits


def protocol_methods(protocol: type) -> list[str]:
    return sorted(
        name
        for name, value in vars(protocol).items()
        if not name.startswith("_") and inspect.isfunction(value)
    )


def incompatibilities(declared: inspect.Signature, actual: inspect.Signature) -> list[str]:
    """How `actual` fails to accept every call `declared` allows (empty when it does)."""
    P = inspect.Parameter
    problems = []
    params = list(actual.parameters.values())
    varargs = any(p.kind is P.VAR_POSITIONAL for p in params)
    varkw = any(p.kind is P.VAR_KEYWORD for p in params)
    positional = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    by_name = {p.name: p for p in params}
    matched = set()
    index = 0
    for want in declared.parameters.values():
        if want.kind is P.VAR_KEYWORD:
            if not varkw:
                problems.append(f"takes no **{want.name}")
            continue
        if want.kind is P.VAR_POSITIONAL:
            if not varargs:
                problems.append(f"takes no *{want.name}")
            continue
        if want.kind is P.KEYWORD_ONLY:
            have = by_name.get(want.name)
            if have is None or have.kind not in (P.KEYWORD_ONLY, P.POSITIONAL_OR_KEYWORD):
                if not varkw:
                    problems.append(f"takes no keyword {want.name!r}")
                continue
        else:
            if index >= len(positional):
                if not varargs:
                    problems.append(f"takes no positional {want.name!r}")
                continue
            have = positional[index]
            index += 1
            if have.name != want.name and want.kind is not P.POSITIONAL_ONLY:
                problems.append(f"names its argument {have.name!r}, not {want.name!r}")
        matched.add(have.name)
        if want.default is not P.empty and have.default is P.empty:
            problems.append(f"requires {want.name!r}, which the port makes optional")
    for extra in params:
        if extra.name in matched or extra.kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD):
            continue
        if extra.default is P.empty:
            problems.append(f"requires {extra.name!r}, which the port does not pass")
    return problems


@pytest.mark.parametrize(
    ("protocol", "implementation"),
    FAKES + ADAPTERS,
    ids=lambda value: getattr(value, "__name__", str(value)),
)
def test_each_fake_and_adapter_implements_every_method_of_its_port(protocol, implementation):
    assert protocol_methods(protocol), f"{protocol.__name__} declares no methods"
    problems = {}
    for name in protocol_methods(protocol):
        method = getattr(implementation, name, None)
        if not callable(method):
            problems[name] = ["missing"]
            continue
        declared = inspect.signature(getattr(protocol, name))
        found = incompatibilities(declared, inspect.signature(method))
        if found:
            problems[name] = found
    assert problems == {}


def test_every_port_is_checked():
    declared = {
        value
        for value in vars(ports).values()
        if isinstance(value, type)
        and typing.Protocol in value.__mro__
        and value.__module__ == ports.__name__
    }
    assert declared == {protocol for protocol, _ in FAKES + ADAPTERS}


def test_the_signature_check_catches_what_it_should():
    def port(self, instance, token, *, request_id, countdown=0, task_id=None): ...

    def renamed(self, inst, token, *, request_id, countdown=0, task_id=None): ...

    def no_default(self, instance, token, *, request_id, countdown, task_id=None): ...

    def extra(self, instance, token, mode, *, request_id, countdown=0, task_id=None): ...

    def loose(self, instance, token, **options): ...

    sig = inspect.signature
    assert incompatibilities(sig(port), sig(port)) == []
    assert incompatibilities(sig(port), sig(loose)) == []
    assert incompatibilities(sig(port), sig(renamed)) == [
        "names its argument 'inst', not 'instance'"
    ]
    assert incompatibilities(sig(port), sig(no_default)) == [
        "requires 'countdown', which the port makes optional"
    ]
    assert "requires 'mode', which the port does not pass" in incompatibilities(
        sig(port), sig(extra)
    )
