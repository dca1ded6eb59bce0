"""Per-run overhead of `harness run` for the small LSTM on CPU.

Starts `harness run` on lstm_small (through a copy that stamps the wall-clock time of its first
and last train_step into its run directory) for a few steps, sandboxed as by default, and reads the time the score was stored from the database.
Prints: process start -> first train_step, and last train_step -> score stored (which includes
scoring all of valid and test with every check). Targets: under 5 s each.

    python benchmarks/run_overhead.py [--steps 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import REPO, machine
from harness.store import Store


def one_run(steps: int, work: Path) -> tuple[float, float, float]:
    db = work / "bench.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.time()
    subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(REPO / "benchmarks" / "entries" / "stamped_lstm.py"),
         "--hparam", f"max_steps={steps}", "--evals", "0",
         "--db", str(db), "--runs-dir", str(work / "runs")],
        cwd=work, env=env, check=True, capture_output=True,
    )
    finished = time.time()
    run = Store(db).runs()[-1]
    marks = json.loads((work / "runs" / str(run.id) / "stamps.json").read_text())  # the child's cwd
    stored = run.ended_at.timestamp()
    return marks["first_step_start"] - started, stored - marks["last_step_end"], finished - stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for round_number in range(args.rounds):
            work = Path(folder) / str(round_number)
            work.mkdir()
            results.append(one_run(args.steps, work))
    start, end, exit_ = (statistics.median(column) for column in zip(*results))
    print(f"machine: {machine()}")
    print(f"lstm_small, {args.steps} steps, median of {args.rounds} runs")
    print(f"harness run start -> first train_step: {start:.2f} s  (target < 5 s)")
    print(f"last train_step -> score stored:       {end:.2f} s  (target < 5 s; includes scoring valid and test)")
    print(f"score stored -> process exit:          {exit_:.2f} s")


if __name__ == "__main__":
    main()
