"""How long `harness site` takes on a realistic database (target: a few seconds at most).

Builds a database of 200 entries x 10 runs (per-sentence NLL, curves, failures), then times
building the whole static site from it: every page, chart, JSON and CSV file.

    python benchmarks/site_speed.py [--entries 200] [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks._common import machine
from benchmarks._synthetic import synthetic_database
from harness.site import SiteOptions, build_site


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = synthetic_database(Path(folder) / "big.sqlite", args.entries, args.runs)
        times, files = [], 0
        for round_number in range(args.rounds):
            started = time.perf_counter()
            files = len(build_site(store, SiteOptions(Path(folder) / f"site{round_number}", phase="final")))
            times.append(time.perf_counter() - started)
    print(f"machine: {machine()}")
    print(f"database: {args.entries} entries, {args.entries * args.runs} runs")
    print(f"harness site: {statistics.median(times):.2f} s for {files} files (median of {args.rounds})")


if __name__ == "__main__":
    main()
