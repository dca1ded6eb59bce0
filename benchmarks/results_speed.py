"""How fast `harness results` and `harness show` are on a realistic database.

Builds a database of 200 entries x 10 runs (with per-sentence NLL, curves and failures), then
times the ranking (statistics and paired bootstrap ties included) rendered as a table, the CSV
export, and `harness show` of one run. Target: well under a second each.

    python benchmarks/results_speed.py [--entries 200] [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from click.testing import CliRunner

from benchmarks._common import machine
from benchmarks._synthetic import synthetic_database
from harness.cli import main as cli


def best_of(rounds: int, args: list[str]) -> float:
    runner = CliRunner()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        result = runner.invoke(cli, args, catch_exceptions=False)
        times.append(time.perf_counter() - started)
        if result.exit_code != 0:
            raise SystemExit(result.output)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "big.sqlite"
        started = time.perf_counter()
        synthetic_database(db, args.entries, args.runs)
        print(f"machine: {machine()}")
        print(f"database: {args.entries} entries, {args.entries * args.runs} runs, built in "
              f"{time.perf_counter() - started:.1f} s")
        for label, command in (
            ("harness results (open phase, table)", ["results", "--db", str(db)]),
            ("harness results --phase final --format csv", ["results", "--db", str(db), "--phase", "final",
                                                           "--format", "csv"]),
            ("harness results --runs --status failed", ["results", "--db", str(db), "--runs", "--status", "failed"]),
            ("harness show 1234", ["show", "1234", "--db", str(db)]),
        ):
            print(f"{label}: {best_of(5, command) * 1000:.0f} ms (median of 5, in-process)")


if __name__ == "__main__":
    main()
