"""`python -m tests.chaos --seed N --rounds R`: the chaos suite (docs/RELIABILITY.md).

Round i runs with seed N+i; each round prints its seed, so `--seed <that seed>` replays it (the
same plan; timing makes the interleaving differ slightly). Exits 1 when any invariant was violated.
"""

import argparse
import random
import sys
import tempfile
from pathlib import Path

from tests.chaos.harness import start_chaos_stack
from tests.chaos.rounds import run_round, summary
from tests.chaos.scenario import FULL, SHORT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, help="the first round's seed (default: random)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--short", action="store_true", help="the small round `make test` runs")
    parser.add_argument("--workdir", type=Path, help="where logs go (default: a temp dir)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dark-chaos-"))
    print(f"chaos: seed={seed} rounds={args.rounds} logs in {workdir}", flush=True)

    chaos = start_chaos_stack(workdir)
    results = []
    try:
        for n in range(args.rounds):
            results.append(run_round(chaos, seed + n, SHORT if args.short else FULL, echo=_echo))
    finally:
        chaos.stop()
    print("\n" + summary(results))
    print(f"\nreproduce: make chaos SEED={seed} ROUNDS={args.rounds}")
    return 1 if any(r.violations for r in results) else 0


def _echo(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
