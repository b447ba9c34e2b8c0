"""One chaos round: onboard fresh tenants with canary secrets, run the seeded plan, wait for the
stack to converge, check every invariant. And the Markdown summary of several rounds."""

import random
import time
from dataclasses import dataclass, field

import requests

from tests.chaos import canaries, invariants
from tests.chaos.driver import Driver
from tests.chaos.harness import ChaosStack
from tests.chaos.observe import events_by_instance, wait_for_convergence
from tests.chaos.scenario import Profile, plan

# Above reconcile's 60 s resume of a chain that died (STALL_SECS, service_layer/reconcile.py)
# plus a few intervals and the orphan grace period: a round that has not settled by then is stuck
# for good.
CONVERGENCE_SECS = 120


@dataclass
class RoundResult:
    seed: int
    actions: int
    faults: int
    provisions: int
    teardowns: int
    seconds: float
    violations: list[str] = field(default_factory=list)


def run_round(chaos: ChaosStack, seed: int, profile: Profile, echo=print) -> RoundResult:
    started = time.monotonic()
    steps = plan(seed, profile)
    echo(f"chaos round seed={seed}: {len(steps)} steps (replay: make chaos SEED={seed})")
    for step in steps:
        echo(f"  plan {step.describe()}")
    tenants = sorted({s.params["tenant"] for s in steps if "tenant" in s.params})
    values = []
    for tenant in tenants:
        claude, nks = canaries.canaries_for(tenant)
        chaos.stack.onboard(tenant, claude, nks)
        values += [claude, nks]

    driver = Driver(chaos, random.Random(seed), echo=echo)
    log = driver.run(steps)
    asked = {i["id"] for ref, i in log.instances.items() if _teardown_planned(steps, ref)}
    snap, moving = wait_for_convergence(
        chaos, tenants, log.teardowns_accepted, CONVERGENCE_SECS, echo=echo
    )
    violations = [f"not converged after {CONVERGENCE_SECS} s: {m}" for m in moving]
    violations += invariants.event_chains(snap.rows, events_by_instance(driver, snap.rows))
    violations += invariants.final_statuses(snap, log.teardowns_accepted, asked)
    violations += invariants.one_vm_per_live_row(snap)
    violations += invariants.no_orphans(snap)
    idle = not any(
        row["status"] in ("pending", "provisioning", "tearing_down") for row in snap.open_rows
    )
    violations += invariants.budget_released(chaos.database_url, idle)
    violations += invariants.one_identity_per_tenant(snap, lambda vm: _guest_pubkey(chaos, vm))
    violations += invariants.http_answers(log.answers)
    violations += canaries.scan(chaos, values, log.answers)
    violations += [f"process {name} died" for name in chaos.dead_processes()]

    result = RoundResult(
        seed=seed,
        actions=len(log.executed),
        faults=log.faults,
        provisions=len(log.instances),
        teardowns=len(log.teardowns_accepted),
        seconds=time.monotonic() - started,
        violations=violations,
    )
    echo(
        f"round seed={seed}: {result.actions} actions ({len(log.skipped)} skipped), "
        f"{result.faults} faults, {result.provisions} instances, {result.teardowns} teardowns, "
        f"{len(violations)} violations, {result.seconds:.0f} s"
    )
    for violation in violations:
        echo(f"  VIOLATION {violation}")
    return result


def _teardown_planned(steps, ref: int) -> bool:
    return any(
        (s.kind == "teardown" and s.params["ref"] == ref)
        or (s.kind == "provision" and s.params["ref"] == ref and s.params.get("teardown_at_once"))
        for s in steps
    )


def _guest_pubkey(chaos: ChaosStack, vm_id: str) -> str | None:
    resp = requests.get(f"{chaos.sim.admin_url}/guests/vms/{vm_id}", timeout=10)
    return resp.json().get("ssh_pubkey") if resp.ok else None


def summary(results: list[RoundResult]) -> str:
    """The Markdown table for docs/RELIABILITY.md."""
    lines = [
        "| seed | actions | faults injected | instances | teardowns | violations | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.seed} | {r.actions} | {r.faults} | {r.provisions} | {r.teardowns}"
            f" | {len(r.violations)} | {r.seconds:.0f} |"
        )
    total = sum(len(r.violations) for r in results)
    lines.append(
        f"| **{len(results)} rounds** | {sum(r.actions for r in results)}"
        f" | {sum(r.faults for r in results)} | {sum(r.provisions for r in results)}"
        f" | {sum(r.teardowns for r in results)} | **{total}**"
        f" | {sum(r.seconds for r in results):.0f} |"
    )
    return "\n".join(lines)
