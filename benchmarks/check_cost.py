"""The supervisor's cost per block of rows: copying a (16, 64, 10,000) float32 block out of shared
memory and checking it (finite, <= 0, normalised, logsumexp per position), with one and with two
checking threads, beside the log_softmax a bare loop spends on the same block.

    python -m benchmarks.check_cost [--repeats 30]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks._common import machine
from harness.scoring import check_rows

B, L, V = 16, 64, 10_000


def per_call_ms(function: Callable[[], object], repeats: int) -> float:
    function()  # warm: buffers, thread pool
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the supervisor runs (harness.execution.lean_supervisor)
    logits = torch.randn(B, L, V, generator=torch.Generator().manual_seed(0))
    shared = logits.log_softmax(-1).numpy().reshape(-1).copy()  # stands in for the shared block
    copy = np.empty_like(shared)
    rows = torch.from_numpy(copy).view(B, L, V)
    print(f"machine: {machine()}; block ({B}, {L}, {V}) float32, {shared.nbytes / 2**20:.0f} MiB")
    print(f"copy out of shared memory: {per_call_ms(lambda: np.copyto(copy, shared), args.repeats):.1f} ms")
    for workers in (1, 2):
        ms = per_call_ms(lambda: check_rows(rows, V, 1e-3, workers), args.repeats)
        print(f"check_rows, {workers} thread(s): {ms:.1f} ms")
    print(f"log_softmax of the same block (a bare loop's share), 1 thread: "
          f"{per_call_ms(lambda: torch.log_softmax(logits, -1), args.repeats):.1f} ms")


if __name__ == "__main__":
    main()
