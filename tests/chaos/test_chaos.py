"""One short seeded chaos round (docs/RELIABILITY.md) inside `make test`; `make chaos` runs
full ones.

The seed is printed; CHAOS_SEED=<n> replays that round's plan.
"""

import os
import random

import pytest

from tests.chaos.harness import start_chaos_stack
from tests.chaos.rounds import run_round
from tests.chaos.scenario import SHORT


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_short_chaos_round_keeps_every_invariant(tmp_path):
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1, 10**6))
    print(f"chaos seed {seed} (replay: CHAOS_SEED={seed}, or make chaos SEED={seed})")
    chaos = start_chaos_stack(tmp_path)
    try:
        result = run_round(chaos, seed, SHORT)
    finally:
        chaos.stop()
    assert result.violations == [], (
        f"seed {seed}: {len(result.violations)} violations:\n" + "\n".join(result.violations)
    )
