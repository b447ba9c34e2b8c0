"""The adaptive poll schedule (shared/service_layer/polling.py): pure functions, the `Waits`
policy over a fake history, and the pipeline's first polls over fakes."""

import dataclasses
import itertools
import uuid
from datetime import UTC, datetime

import pytest

from shared.domain.errors import RegistryUnavailable
from shared.domain.lifecycle import Status
from shared.domain.records import OperationState, VmSpec
from shared.domain.tenants import TenantName
from shared.domain.waits import WaitKind, WaitSample
from shared.service_layer.pipeline import OPERATION_POLL_SECS, Pipeline
from shared.service_layer.polling import Estimate, Waits, estimate, next_poll
from shared.settings import Settings
from tests.fakes import (
    FakeCompute,
    FakeLocks,
    FakeOperationBudget,
    FakeRegistry,
    FakeWaitHistory,
)

FIXED = 1.0


def polls(duration: float, learned: Estimate | None, fixed: float = FIXED) -> list[float]:
    """The times a wait finishing at `duration` is polled at: once on entry, then on schedule,
    until a poll finds it done."""
    at = [0.0]
    while at[-1] < duration:
        at.append(at[-1] + next_poll(at[-1], learned, fixed))
        assert len(at) < 1000, "the schedule never reached the finish"
    return at


def sample(not_done_at: float, done_at: float) -> WaitSample:
    return WaitSample(not_done_at=not_done_at, done_at=done_at)


# --- estimate ------------------------------------------------------------------------------------


def test_no_samples_no_estimate():
    assert estimate([]) is None


def test_one_sample_is_its_own_bracket():
    assert estimate([sample(4.0, 5.0)]) == Estimate(lower=4.0, upper=5.0)


def test_the_bounds_are_the_quartiles_of_each_side_of_the_brackets():
    brackets = [sample(4.0 + i / 10, 5.0 + i / 10) for i in range(9)]
    assert estimate(brackets) == Estimate(lower=4.2, upper=5.2)


def test_one_slow_wait_among_many_moves_neither_bound():
    usual = [sample(4.9, 5.1)] * 9
    assert estimate([sample(59.0, 60.0), *usual]) == estimate(usual)


def test_a_bracket_wider_than_half_its_wait_does_not_bound_from_below():
    # Found done at the first poll after the one on entry: it says only "done by 5.0".
    assert estimate([sample(0.05, 5.0)]) == Estimate(lower=2.5, upper=5.0)
    assert estimate([sample(0.05, 5.0), sample(4.0, 5.5)]) == Estimate(lower=4.0, upper=5.0)


def test_a_lower_bound_above_the_upper_is_clamped_to_it():
    # Two quick waits found done early, three slow ones bracketed tightly: the quartiles cross,
    # and the estimate is a single point.
    spread = [sample(0.1, 2.0), sample(0.1, 3.0), *(sample(d - 0.1, d) for d in (20, 21, 22))]
    assert estimate(spread) == Estimate(lower=3.0, upper=3.0)


def test_a_sample_must_bracket_forwards():
    with pytest.raises(ValueError):
        WaitSample(not_done_at=5.0, done_at=4.0)
    with pytest.raises(ValueError):
        WaitSample(not_done_at=-1.0, done_at=4.0)


# --- next_poll -----------------------------------------------------------------------------------


def test_without_an_estimate_the_interval_is_fixed():
    assert next_poll(0.0, None, FIXED) == FIXED
    assert next_poll(7.3, None, 2.0) == 2.0
    assert polls(5.0, None) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_narrow_estimate_sleeps_until_its_upper_bound():
    learned = Estimate(lower=4.98, upper=5.0)
    assert next_poll(0.0, learned, FIXED) == pytest.approx(5.0)
    assert polls(4.99, learned) == [0.0, pytest.approx(5.0)]


def test_a_wide_estimate_probes_its_middle_first():
    learned = Estimate(lower=4.0, upper=5.0)
    assert next_poll(0.0, learned, FIXED) == pytest.approx(4.5)
    assert next_poll(4.5, learned, FIXED) == pytest.approx(0.5)
    assert polls(4.7, learned) == pytest.approx([0.0, 4.5, 5.0])
    assert polls(4.3, learned) == pytest.approx([0.0, 4.5])


def test_past_the_estimate_the_gaps_double_from_one_step_up_to_the_fixed_interval():
    learned = Estimate(lower=5.0, upper=5.0)  # a step is 50 ms
    at = polls(12.0, learned)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(at[1:])]
    assert gaps[:5] == [0.05, 0.05, 0.1, 0.2, 0.4]
    assert max(gaps) == FIXED and gaps[-3:] == [FIXED] * 3


def test_the_step_is_a_share_of_a_long_wait():
    learned = Estimate(lower=60.0, upper=60.0)
    assert next_poll(60.0, learned, 5.0) == pytest.approx(0.6)


def test_a_learned_wait_is_found_done_sooner_and_in_fewer_polls_than_the_fixed_interval():
    # The simulator's 5 s create, polled every second: 6 polls, done seen 0.9 s late at worst.
    fixed = polls(4.1, None)
    learned = polls(4.1, Estimate(lower=4.08, upper=4.12))
    assert fixed == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert learned == pytest.approx([0.0, 4.12])
    assert len(learned) < len(fixed) and learned[-1] < fixed[-1]


def test_a_wait_longer_than_learned_costs_at_most_a_few_more_polls_than_the_fixed_interval():
    learned = Estimate(lower=2.0, upper=2.0)
    assert len(polls(30.0, learned)) <= len(polls(30.0, None)) + 5


def test_a_long_estimate_is_never_slept_towards_in_one_go():
    # A cloud much faster than its history: the wait is still looked at before the old estimate.
    learned = Estimate(lower=600.0, upper=600.0)
    assert next_poll(0.0, learned, FIXED) == 300.0
    assert next_poll(0.0, Estimate(lower=12.0, upper=12.0), FIXED) == 8 * FIXED


def test_a_poll_just_short_of_a_target_skips_to_the_next_one():
    learned = Estimate(lower=4.0, upper=5.0)
    # 4.49 is within half a step of the middle (4.5): next is the upper bound.
    assert next_poll(4.49, learned, FIXED) == pytest.approx(0.51)


def test_bisection_across_vms_closes_in_on_a_steady_duration():
    """Each VM's polls bracket the finish; the next VM's estimate is narrower, so after a few VMs
    the finish is seen within a step and in two polls (the entry poll and one more)."""
    duration, history = 5.03, []  # the first VM polls at the fixed interval
    for _ in range(8):
        at = polls(duration, estimate(history))
        history.insert(0, sample(max(t for t in at if t < duration), at[-1]))
    last = polls(duration, estimate(history))
    assert history[-1] == sample(5.0, 6.0)
    assert last[-1] - duration <= 0.05
    assert len(last) <= 3


# --- Waits ---------------------------------------------------------------------------------------


def test_waits_learn_from_the_history_when_adaptive():
    history = FakeWaitHistory({WaitKind.CREATE: [sample(4.98, 5.0)]})
    waits = Waits(history, adaptive=True)
    assert waits.delay(WaitKind.CREATE, 0.0, FIXED) == pytest.approx(5.0)
    assert waits.delay(WaitKind.BOOT, 0.0, 2.0) == 2.0  # nothing learned about boots yet


def test_waits_poll_at_the_fixed_interval_when_not_adaptive_but_still_record():
    history = FakeWaitHistory({WaitKind.CREATE: [sample(4.98, 5.0)]})
    waits = Waits(history, adaptive=False)
    instance_id = uuid.uuid4()
    assert waits.delay(WaitKind.CREATE, 0.0, FIXED) == FIXED
    waits.finished(WaitKind.BOOT, instance_id, 3.0, 3.5)
    assert history.recorded == {(WaitKind.BOOT, instance_id): sample(3.0, 3.5)}


def test_a_finished_wait_is_recorded_once_per_instance_and_clamped():
    history = FakeWaitHistory()
    waits = Waits(history, adaptive=True)
    instance_id = uuid.uuid4()
    waits.finished(WaitKind.CREATE, instance_id, 5.2, 5.1)  # two clocks a little apart
    waits.finished(WaitKind.CREATE, instance_id, 9.0, 10.0)  # a later step saw it done again
    assert history.recent(WaitKind.CREATE) == [sample(5.1, 5.1)]


class _DownHistory:
    def record(self, kind, instance_id, sample):
        raise RegistryUnavailable("down")

    def recent(self, kind):
        raise RegistryUnavailable("down")


def test_an_unreachable_history_falls_back_to_the_fixed_interval():
    waits = Waits(_DownHistory(), adaptive=True)
    assert waits.delay(WaitKind.CREATE, 0.0, FIXED) == FIXED
    waits.finished(WaitKind.CREATE, uuid.uuid4(), 1.0, 2.0)  # dropped, not raised


def test_without_a_history_waits_are_fixed():
    waits = Waits(adaptive=True)
    assert not waits.adaptive
    assert waits.delay(WaitKind.BOOT, 3.0, 2.0) == 2.0


def test_a_wait_just_begun_is_polled_at_once_unless_learned_to_take_longer():
    history = FakeWaitHistory(
        {WaitKind.CREATE: [sample(4.98, 5.0)], WaitKind.BOOT: [sample(0.01, 0.02)]}
    )
    waits = Waits(history, adaptive=True)
    assert waits.first_poll(WaitKind.CREATE, 0.0, FIXED) == pytest.approx(5.0)
    assert waits.first_poll(WaitKind.BOOT, 0.0, 2.0) == 0.0  # may be over already
    assert Waits(FakeWaitHistory(), adaptive=True).first_poll(WaitKind.CREATE, 0.0, FIXED) == 0.0
    assert Waits(history, adaptive=False).first_poll(WaitKind.CREATE, 0.0, FIXED) == 0.0


# --- the pipeline's polls ------------------------------------------------------------------------

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class RunningCreate(FakeCompute):
    """A create whose operation is still running, of a VM with an address; counts its polls."""

    def __init__(self) -> None:
        super().__init__()
        self.operation_polls = 0

    def create_instance(self, spec: VmSpec) -> OperationState:
        done = super().create_instance(spec)
        vm = self.vms[done.provider_id]
        self.vms[vm.provider_id] = dataclasses.replace(vm, address="10.0.0.5")
        running = dataclasses.replace(done, done=False)
        self.operations[running.operation_id] = running
        return running

    def get_operation(self, operation_id: str) -> OperationState:
        self.operation_polls += 1
        return super().get_operation(operation_id)

    def finish(self) -> None:
        for op_id, op in self.operations.items():
            self.operations[op_id] = dataclasses.replace(op, done=True)


class CountingBudget(FakeOperationBudget):
    def __init__(self, registry: FakeRegistry) -> None:
        super().__init__(registry)
        self.asked = 0
        self.released = 0

    def acquire(self, instance_id, kind):
        self.asked += 1
        return super().acquire(instance_id, kind)

    def release(self, instance_id):
        self.released += 1
        return super().release(instance_id)


def provisioning(learned: dict[WaitKind, list[WaitSample]]):
    registry = FakeRegistry(now=T0)
    compute = RunningCreate()
    budget = CountingBudget(registry)
    pipeline = Pipeline(
        registry=registry,
        compute=compute,
        guest=None,  # never called: a learned boot is not checked on entry
        secrets=None,
        bundles=None,
        locks=FakeLocks(),
        capacity=budget,
        settings=Settings(),
        waits=Waits(FakeWaitHistory(learned), adaptive=True),
        clock=lambda: T0,
    )
    row, _ = registry.create(TenantName("t"))
    return pipeline, registry, compute, budget, row


def test_a_create_learned_to_take_seconds_is_not_polled_at_once_and_asks_the_budget_once():
    pipeline, registry, compute, budget, row = provisioning({WaitKind.CREATE: [sample(4.98, 5.0)]})
    step = pipeline.advance(row.id, row.wake_token)

    assert registry.rows[row.id].status is Status.PROVISIONING
    assert compute.operation_polls == 0
    assert step.delay == pytest.approx(5.0)
    assert budget.asked == 1


def test_a_create_with_nothing_learned_is_polled_at_once():
    pipeline, _, compute, _, row = provisioning({})
    step = pipeline.advance(row.id, row.wake_token)

    assert compute.operation_polls == 1
    assert step.delay == OPERATION_POLL_SECS


def test_a_boot_learned_to_take_seconds_is_not_checked_on_entry_and_the_slot_freed_once():
    pipeline, registry, compute, budget, row = provisioning(
        {WaitKind.CREATE: [sample(4.98, 5.0)], WaitKind.BOOT: [sample(4.0, 4.5)]}
    )
    step = pipeline.advance(row.id, row.wake_token)
    compute.finish()
    step = pipeline.advance(row.id, step.token)

    assert registry.rows[row.id].status is Status.INITIALIZING
    assert step.delay == pytest.approx(4.25)  # the middle of the learned bracket
    assert budget.released == 1 and budget.slots == {}
