"""The cost of a validation pass beyond the scoring itself: checkpoint, freeze, load into both
scorers, thaw (lstm_small on this machine's cores; target <= 1.5 s).

    python -m benchmarks.pass_overhead [--passes 3]
"""

from __future__ import annotations

import argparse
import os
import statistics

from benchmarks._common import machine
from benchmarks._runs import harness_run, run_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    _, data = run_data()
    result, _ = harness_run(data, "lstm_small", {}, 15.0 * (args.passes + 1), args.passes, os.cpu_count() or 1)
    assert result.ok, result.reason
    overheads = [p["total"] - p["scoring"] for p in result.pass_seconds if "total" in p]
    print(f"machine: {machine()}")
    for index, p in enumerate(result.pass_seconds):
        print(f"pass {index}: whole {p.get('total', float('nan')):.2f} s, scoring {p['scoring']:.2f} s, "
              f"of which loading the checkpoint into both scorers {p['load']:.2f} s")
    print(f"overhead beyond scoring (median of {len(overheads)}): {statistics.median(overheads):.2f} s  "
          f"(target <= 1.5 s); freezer: {'yes' if not result.paused_counted else 'no'}")


if __name__ == "__main__":
    main()
