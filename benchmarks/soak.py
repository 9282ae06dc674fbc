"""
C{python -m benchmarks.soak [--runs N] [--seed S] [--bound SECONDS]}: N
migrations through the real daemons (C{--oneshot}), each with one fault
drawn at random (a link reset, a link silently dead, or SIGKILL of the
proxy, the cache or CRIU's dump, at a random point of the link:
L{imgrelay.testing.faults.CELLS}), and
a count of how they ended:

  - completed: the restore read every image, byte for byte, and each
    daemon the fault did not kill exited 0;
  - failed loudly: the migration did not complete; each daemon the fault
    did not kill exited 0 for its own part done (a proxy whose session the
    cache confirmed) or non-zero with the reason in its log, and the
    restore read no wrong image;
  - failed quietly: a daemon exited non-zero without a reason;
  - hung: a process or the restore had not ended within the bound;
  - wrong bytes: the restore read an image that is not the one dumped,
    from a cache that lived on.

The last three must stay at zero. Not run by CI: a run of 200 takes minutes.
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import sys
import tempfile
import time
from typing import Optional

from imgrelay.testing.faults import CELLS, Outcome, migrate


def verdict(outcome: Outcome) -> str:
    """
    @return: How C{outcome} ended: C{"completed"} (the restore read every
        image byte for byte, and every daemon the fault did not kill exited
        0), C{"failed loudly"} (the migration did not complete, and every
        daemon the fault did not kill exited 0 for its own part done, such
        as a proxy whose session the cache had confirmed, or non-zero
        saying why), C{"hung"}, C{"wrong bytes"}, or C{"failed quietly"}
        (a daemon exiting non-zero without saying why).
    """
    if outcome.wrongBytes:
        return "wrong bytes"
    if outcome.hung:
        return "hung"
    proxyLog, cacheLog = outcome.logs
    living = [
        (status, log)
        for who, status, log in (("proxy", outcome.proxy, proxyLog), ("cache", outcome.cache, cacheLog))
        if who != outcome.victim
    ]
    if any(status != 0 and "failed" not in log for status, log in living):
        return "failed quietly"
    if outcome.restoredWhole and all(status == 0 for status, _ in living):
        return "completed"
    return "failed loudly"


def main(argv: Optional[list[str]] = None) -> int:
    """
    Run the soak; print each run and the totals.

    @return: 0 if nothing hung and no wrong byte was read, else 1.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="migrations (default 200)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the faults drawn (default: random)")
    parser.add_argument("--bound", type=float, default=60.0, help="seconds a process may take to end (default 60)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    counts: collections.Counter[str] = collections.Counter()
    faults: collections.Counter[str] = collections.Counter()
    print(f"soak: {args.runs} faulted migrations, seed {seed}", flush=True)
    started = time.monotonic()
    for run in range(1, args.runs + 1):
        point, fault = rng.choice(CELLS)
        base = tempfile.mkdtemp(prefix="imgrelay-soak-")
        try:
            outcome = migrate(base, point, fault, bound=args.bound)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        result = verdict(outcome)
        counts[result] += 1
        where = f"{fault} at {point}"
        faults[where] += 1
        struck = "" if outcome.struck else " (the link ended before the point: no fault)"
        print(
            f"run {run:>4}: {where:<36} {result:<14} proxy {outcome.proxy}, cache {outcome.cache}, "
            f"dump {outcome.dumper}, {outcome.seconds:5.1f} s{struck}",
            flush=True,
        )
    print(f"\nsoak: {args.runs} runs in {time.monotonic() - started:.0f} s, seed {seed}")
    for key in ("completed", "failed loudly", "failed quietly", "hung", "wrong bytes"):
        print(f"  {key:<15} {counts[key]}")
    bad = counts["hung"] + counts["wrong bytes"] + counts["failed quietly"]
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
