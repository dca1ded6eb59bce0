"""Per-run overhead of a sandboxed run of the small LSTM on CPU, from the supervisor's events.

Prints: start of the run (sandboxes, two scorers and the trainer started) -> the first progress
report of a trained step, and the end of training -> the result returned (which includes scoring
all of valid and test with every check and audit). Targets: under 5 s each (the second is
dominated by scoring 156,190 tokens, see scoring_throughput).

    python -m benchmarks.run_overhead [--steps 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from benchmarks._common import machine
from benchmarks._runs import harness_run, run_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    _, data = run_data()
    starts, ends = [], []
    for _ in range(args.rounds):
        began = time.monotonic()
        result, events = harness_run(data, "lstm_small", {"max_steps": args.steps}, 3600, 0, os.cpu_count() or 1)
        assert result.ok, result.reason
        first = next(t for t, e in events if e["type"] == "progress" and e["step"] >= 1)
        scoring = next(t for t, e in events if e.get("phase") == "scoring")
        starts.append(first - began)
        ends.append(events[-1][0] - scoring)
    print(f"machine: {machine()}")
    print(f"lstm_small, {args.steps} steps, median of {args.rounds} runs")
    print(f"run start -> first trained step reported: {statistics.median(starts):.2f} s  (target < 5 s)")
    print(f"end of training -> result:               {statistics.median(ends):.2f} s  (includes scoring valid and test)")


if __name__ == "__main__":
    main()
