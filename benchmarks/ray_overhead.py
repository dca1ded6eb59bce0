"""The ray executor against the local one, on a two-node Ray cluster started here on loopback.

1. Per-run overhead: the same short run (tests/entries/slow_counter.py, no pauses, 5 steps) through
   `Supervisor.run_all` with each executor, alternating; the difference of the medians is what
   placing a run on the cluster costs (task submission, data from the object store, digest check,
   streaming the result back). Target: <= 2 s.
2. Throughput: 8 single-threaded short runs (slow_counter, 20 steps of 0.2 s: training mostly
   waits, as a budgeted run on its own core would) on the two one-CPU nodes, against the local
   executor running them one after another. Target: <= 0.65x the local wall time.

    python -m benchmarks.ray_overhead [--rounds 3] [--runs 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks._common import REPO, alternate, corpus, machine
from harness.budget import RunLimits
from harness.entries import EntrySource
from harness.executors import Executor, LocalExecutor, RayExecutor
from harness.sandbox import resolve_confinement
from harness.store import Store
from harness.supervisor import REUSE_NOTHING, RunRequest, Supervisor
from tests.ray_cluster import RayCluster

ENTRY = REPO / "tests" / "entries" / "slow_counter.py"


def requests(count: int, steps: int, pause: float) -> list[RunRequest]:
    entry = EntrySource.read(ENTRY, "submission")
    limits = RunLimits(seconds=60, memory_bytes=2 * 2**30, evals=0)
    return [RunRequest(entry=entry, hparams={"max_steps": steps, "pause": pause}, seed=seed, device="cpu",
                       threads=1, limits=limits, division="cpu") for seed in range(count)]


def timed_runs(supervisor: Supervisor, batch: list[RunRequest]) -> float:
    start = time.perf_counter()
    outcomes = supervisor.run_all(batch, REUSE_NOTHING)
    elapsed = time.perf_counter() - start
    bad = [(o.entry, o.status.value, o.reason) for o in outcomes if o.status.value != "ok"]
    if bad or len(outcomes) != len(batch):
        raise SystemExit(f"a benchmark run did not end ok: {bad}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    data = corpus()
    confinement = resolve_confinement("auto")
    cluster = RayCluster()
    try:
        cluster.start_head({"division:cpu": 1})
        cluster.add_node({"division:cpu": 1})
        cluster.wait_for_nodes(2)
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            local_executor: Executor = LocalExecutor(confinement, work / "runs-local")
            ray_executor: Executor = RayExecutor(cluster.address, confinement.sandbox)
            with Supervisor(Store(work / "local.sqlite"), data, work / "runs-local", confinement=confinement,
                            executor=local_executor) as local, \
                    Supervisor(Store(work / "ray.sqlite"), data, work / "runs-ray", confinement=confinement,
                               executor=ray_executor) as placed:
                one = requests(1, 5, 0.0)
                timed_runs(placed, one)  # warm: the first task starts a worker process on its node
                local_one, ray_one = alternate(lambda: timed_runs(local, one), lambda: timed_runs(placed, one),
                                               args.rounds)
                batch = requests(args.runs, 20, 0.2)
                local_all, ray_all = alternate(lambda: timed_runs(local, batch), lambda: timed_runs(placed, batch),
                                               max(1, args.rounds - 2))
    finally:
        cluster.stop()
    print(f"machine: {machine()}")
    print(f"one short run (slow_counter, 5 steps), median of {args.rounds}: local {local_one:.2f} s, "
          f"ray {ray_one:.2f} s, overhead {ray_one - local_one:+.2f} s (target <= 2 s)")
    print(f"{args.runs} single-threaded runs (slow_counter, 20 x 0.2 s) on 2 one-CPU nodes: local one after another "
          f"{local_all:.1f} s, ray {ray_all:.1f} s, ratio {ray_all / local_all:.2f}x (target <= 0.65x)")


if __name__ == "__main__":
    main()
