"""A seeded plan of one chaos round: what happens, to whom, and when.

`plan(seed, profile)` is a pure function of its arguments: the same seed gives the same plan, step
for step. What it cannot pin down is timing: a step runs at its planned second, but the stack under
it (Celery, the simulator's delays, the restarts) answers a little earlier or later from one run to
the next, so a replay runs the same plan through a slightly different interleaving.

Instances are named by the plan's own reference numbers (`ref`): the n-th provision of the round.
A teardown or a guest fault aimed at a ref acts on whatever instance that provision created, once
it exists; the driver skips it (and says so) when the provision was refused.
"""

import random
from dataclasses import dataclass, field

# Cloud faults: (method, code, where). Codes inside operations are the create failures a finished
# operation reports; UNAVAILABLE windows on the RPCs are the cloud's transient outages.
RPC_WINDOWS = (("Create", "UNAVAILABLE"), ("Get", "UNAVAILABLE"), ("OperationGet", "UNAVAILABLE"),
               ("Delete", "UNAVAILABLE"), ("List", "UNAVAILABLE"))  # fmt: skip
OPERATION_FAILURES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "INTERNAL")
GUEST_MODES = ("unavailable", "error500", "garbage")
FAULT_KINDS = frozenset(
    {"cloud_window", "cloud_operation_failure", "guest_flap", "guest_fault", "kill_child"}
    | {"restart_redis", "restart_postgres"}
)


@dataclass(frozen=True)
class Profile:
    """How big a round is."""

    tenants: int = 8
    provisions: int = 40
    duration: float = 60.0  # seconds over which the steps are spread
    reconciles: int = 4
    cloud_windows: int = 3
    operation_failures: int = 3
    guest_flaps: int = 3
    guest_faults: int = 3  # one guest each: garbage, 500s or 503s for a while
    child_kills: int = 3


SHORT = Profile(tenants=4, provisions=14, duration=30.0, reconciles=2, cloud_windows=2,
                operation_failures=1, guest_flaps=1, guest_faults=2, child_kills=2)  # fmt: skip
FULL = Profile()


@dataclass(frozen=True)
class Step:
    at: float  # seconds after the round starts
    kind: str
    params: dict = field(default_factory=dict)

    def describe(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"t={self.at:5.1f}s {self.kind} {args}".rstrip()


def plan(seed: int, profile: Profile) -> list[Step]:
    rng = random.Random(seed)
    span = profile.duration
    tenants = [f"chaos-{seed}-t{i}" for i in range(profile.tenants)]
    steps = _provisions(rng, tenants, profile)
    steps += _teardowns(rng, steps, span)
    steps += [Step(rng.uniform(0, span), "reconcile") for _ in range(profile.reconciles)]
    steps += _cloud_faults(rng, profile)
    steps += _guest_faults(rng, steps, profile)
    workers = ("provisioner-1", "provisioner-2", "reconciler-1", "reconciler-2")
    steps += [
        Step(rng.uniform(0.1 * span, 0.9 * span), "kill_child", {"worker": rng.choice(workers)})
        for _ in range(profile.child_kills)
    ]
    steps += _restarts(rng, span)
    return sorted(steps, key=lambda s: (s.at, s.kind))


def _provisions(rng: random.Random, tenants: list[str], profile: Profile) -> list[Step]:
    """Every tenant's first provision comes first for it; half the tenants start with two at once
    (to the two gateways), the race that must still create one identity."""
    span = 0.8 * profile.duration
    counts = {tenant: 1 for tenant in tenants}
    for _ in range(profile.provisions - len(tenants) - len(tenants) // 2):
        counts[rng.choice(tenants)] += 1
    pairs = set(rng.sample(tenants, len(tenants) // 2))
    steps, ref = [], 0
    for tenant in tenants:
        times = sorted(rng.uniform(0, span) for _ in range(counts[tenant]))
        for n, at in enumerate(times):
            if n == 0 and tenant in pairs:
                steps.append(
                    Step(at, "first_provisions", {"tenant": tenant, "refs": (ref, ref + 1)})
                )
                ref += 2
                continue
            params = {"tenant": tenant, "ref": ref, "gateway": rng.randrange(2)}
            if rng.random() < 0.15:  # mid-create: DELETE right after the 202
                params["teardown_at_once"] = True
            steps.append(Step(at, "provision", params))
            ref += 1
    return steps


def _refs(steps: list[Step]) -> list[tuple[float, int]]:
    found = []
    for step in steps:
        if step.kind == "provision":
            found.append((step.at, step.params["ref"]))
        elif step.kind == "first_provisions":
            found.extend((step.at, ref) for ref in step.params["refs"])
    return sorted(found)


def _teardowns(rng: random.Random, provisions: list[Step], span: float) -> list[Step]:
    """About a third of the instances torn down at a random moment after their provision: some
    while provisioning or initialising, some when ready; some of them twice."""
    steps = []
    for at, ref in _refs(provisions):
        if rng.random() < 0.35:
            when = at + rng.choice((rng.uniform(0.2, 2.0), rng.uniform(2.0, 0.4 * span)))
            steps.append(Step(when, "teardown", {"ref": ref, "twice": rng.random() < 0.3}))
    return steps


def _cloud_faults(rng: random.Random, profile: Profile) -> list[Step]:
    span = profile.duration
    steps = []
    for _ in range(profile.cloud_windows):
        method, code = rng.choice(RPC_WINDOWS)
        params = {"method": method, "code": code, "seconds": round(rng.uniform(1.0, 4.0), 1)}
        steps.append(Step(rng.uniform(0, 0.9 * span), "cloud_window", params))
    for _ in range(profile.operation_failures):
        params = {"method": "Create", "code": rng.choice(OPERATION_FAILURES), "count": 1}
        steps.append(Step(rng.uniform(0, 0.8 * span), "cloud_operation_failure", params))
    return steps


def _guest_faults(rng: random.Random, provisions: list[Step], profile: Profile) -> list[Step]:
    """503 flaps of every guest, and single guests answering 500s, 503s or garbage a while after
    their provision (when they are booting or being initialised)."""
    span = profile.duration
    steps = [
        Step(rng.uniform(0, 0.9 * span), "guest_flap", {"seconds": round(rng.uniform(1, 4), 1)})
        for _ in range(profile.guest_flaps)
    ]
    refs = _refs(provisions)
    for at, ref in rng.sample(refs, min(profile.guest_faults, len(refs))):
        params = {"ref": ref, "mode": rng.choice(GUEST_MODES), "seconds": rng.choice((3, 8, 25))}
        steps.append(Step(at + rng.uniform(1.0, 3.0), "guest_fault", params))
    return steps


def _restarts(rng: random.Random, span: float) -> list[Step]:
    """One Redis and one Postgres restart per round, in separate halves so they never overlap."""
    first, second = rng.sample(("restart_redis", "restart_postgres"), 2)
    return [
        Step(rng.uniform(0.15 * span, 0.4 * span), first, {"down_secs": rng.choice((2, 4, 6))}),
        Step(rng.uniform(0.6 * span, 0.85 * span), second, {"down_secs": rng.choice((2, 4, 6))}),
    ]
