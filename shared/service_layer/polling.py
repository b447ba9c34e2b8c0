"""Adaptive waits (docs/ARCHITECTURE.md#waits): when the pipeline polls a create operation or a
booting guest next, learned from how long recent ones took.

A fixed interval adds, on average, half an interval to every wait and spends a poll per interval.
Here each finished wait leaves a sample bracketed by two polls (still going at `not_done_at`, done
at `done_at`), and the next wait of that kind sleeps until it is likely done:

- `estimate` reads the recent samples as an interval around their first quartile: `lower`, the
  quartile of `not_done_at`, and `upper`, the quartile of `done_at` (each sample's finish lies
  between its two, so the quartile of the finishes lies between theirs). A quantile, not a mean:
  one slow VM moves neither bound, and polling at a low one finds most waits still going.
- `next_poll` polls once at the middle of that interval (while it is wider than a step), then at
  `upper`, then backs off: each gap as long as the time already overdue, from one step (1 % of
  `upper`, at least 50 ms) up to the fixed interval. A poll at the middle narrows the interval
  whichever way it answers (that is bisection across VMs), so the learned bounds close in on the
  real duration and a wait ends a step or so after the cloud is done, in two or three polls.
- No samples (a new deployment, a wiped table): the fixed interval, as before.

The middle and `upper` are never slept towards for longer than half of `upper` or eight fixed
intervals, so a cloud that has become much faster than its history is noticed, and its samples
pull the estimate down within a few VMs.
"""

import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from shared.domain.errors import RegistryUnavailable
from shared.domain.waits import WaitKind, WaitSample
from shared.ports import WaitHistory

log = logging.getLogger(__name__)

# The quantile of recent finishes that the next wait is first polled around.
QUANTILE = 0.25
# The finest poll spacing: a share of the expected wait, and never below a Celery countdown's
# useful precision.
MIN_STEP_SECS = 0.05
STEP_SHARE = 0.01
# The longest sleep towards a target, in fixed intervals (or half of `upper`, if longer).
LONGEST_SLEEP_INTERVALS = 8


@dataclass(frozen=True)
class Estimate:
    """A quarter of recent waits were done by `upper` seconds, and not before `lower`."""

    lower: float
    upper: float

    @property
    def step(self) -> float:
        return max(MIN_STEP_SECS, STEP_SHARE * self.upper)


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


def estimate(samples: Sequence[WaitSample]) -> Estimate | None:
    """The likely finish of the next wait, from recent samples (None without any)."""
    if not samples:
        return None
    upper = _quantile([s.done_at for s in samples], QUANTILE)
    # A bracket wider than half its wait (found done at the first poll after the one on entry)
    # bounds the finish only from above.
    tight = [s.not_done_at for s in samples if s.not_done_at >= s.done_at / 2]
    lower = _quantile(tight, QUANTILE) if tight else upper / 2
    return Estimate(lower=min(lower, upper), upper=upper)


def next_poll(elapsed: float, learned: Estimate | None, fixed: float) -> float:
    """Seconds until the next poll of a wait `elapsed` seconds old that has just found it
    unfinished; `fixed` is the interval used without an estimate, and the longest gap."""
    if learned is None:
        return fixed
    step = learned.step
    targets = [learned.upper]
    if learned.upper - learned.lower > step:
        targets.insert(0, (learned.lower + learned.upper) / 2)
    for target in targets:
        if target - elapsed > step / 2:
            longest = max(LONGEST_SLEEP_INTERVALS * fixed, learned.upper / 2)
            return min(target - elapsed, longest)
    return min(fixed, max(step, elapsed - learned.upper))


class Waits:
    """The pipeline's poll schedule: learned from `history` when `adaptive`, else fixed.

    Samples are recorded either way (when there is a history), so switching adaptive waits on
    starts from what the fleet has already seen. The history is an optimisation: when its backend
    is unreachable a wait falls back to the fixed interval and a sample is dropped.
    """

    def __init__(self, history: WaitHistory | None = None, *, adaptive: bool = False) -> None:
        self.history = history
        self.adaptive = adaptive and history is not None

    def delay(self, kind: WaitKind, elapsed: float, fixed: float) -> float:
        if not self.adaptive:
            return fixed
        return next_poll(elapsed, self._learned(kind), fixed)

    def first_poll(self, kind: WaitKind, elapsed: float, fixed: float) -> float:
        """Seconds until the first poll of a wait that has just begun: 0 (poll at once) unless
        the learned schedule says it is not due within a step, which saves a poll that would
        only find it still going. Without an estimate, at once: it may be over already."""
        learned = self._learned(kind) if self.adaptive else None
        if learned is None or learned.upper - elapsed <= learned.step:
            return 0.0
        return next_poll(elapsed, learned, fixed)

    def _learned(self, kind: WaitKind) -> Estimate | None:
        if self.history is None:
            return None
        try:
            return estimate(self.history.recent(kind))
        except RegistryUnavailable as exc:
            log.warning("wait history unavailable, polling at the fixed interval: %s", exc)
            return None

    def finished(
        self, kind: WaitKind, instance_id: uuid.UUID, not_done_at: float, done_at: float
    ) -> None:
        """Record one instance's finished wait (the two times are seconds into it; clamped, as
        they come from two clocks that may disagree by a little)."""
        if self.history is None or not (math.isfinite(not_done_at) and math.isfinite(done_at)):
            return
        done_at = max(0.0, done_at)
        sample = WaitSample(not_done_at=min(max(0.0, not_done_at), done_at), done_at=done_at)
        try:
            self.history.record(kind, instance_id, sample)
        except RegistryUnavailable as exc:
            log.warning("could not record a %s wait: %s", kind, exc)
