"""How fast `harness results` is on PostgreSQL: 200 entries / 2,000 runs on a real server.

Starts a throwaway PostgreSQL cluster on loopback (tests/pg_server.py, as the tests do), fills it
with the synthetic database of benchmarks/results_speed.py (per-sentence NLL, curves, failures),
and a SQLite file with the same data, then times the ranking (statistics and paired bootstrap ties
included) as a table, the CSV export, the failed-runs listing and `harness show`, in-process, on
PostgreSQL and SQLite alternately (so both see the same machine noise). The server is removed at
the end. Target (issue 12): under 1 s on PostgreSQL.

    python -m benchmarks.results_pg [--entries 200] [--runs 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks._common import alternate, machine
from benchmarks._synthetic import synthetic_database
from benchmarks.results_speed import best_of
from tests.pg_server import PgServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    server = PgServer().start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            pg = server.new_database("bench")
            sqlite = str(Path(folder) / "same.sqlite")
            started = time.perf_counter()
            synthetic_database(pg, args.entries, args.runs).close()
            print(f"machine: {machine()}")
            print(f"database: PostgreSQL on loopback, {args.entries} entries, {args.entries * args.runs} runs, "
                  f"built in {time.perf_counter() - started:.1f} s")
            synthetic_database(sqlite, args.entries, args.runs).close()
            for label, command in (
                ("harness results (open phase, table)", ["results"]),
                ("harness results --phase final --format csv", ["results", "--phase", "final", "--format", "csv"]),
                ("harness results --runs --status failed", ["results", "--runs", "--status", "failed"]),
                ("harness show 1234", ["show", "1234"]),
            ):
                on_pg, on_sqlite = alternate(lambda: best_of(1, [*command, "--db", pg]),
                                             lambda: best_of(1, [*command, "--db", sqlite]), 5)
                print(f"{label}: PostgreSQL {on_pg * 1000:.0f} ms, SQLite {on_sqlite * 1000:.0f} ms "
                      "(medians of 5, alternating, in-process)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
