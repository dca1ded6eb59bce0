"""Training-loop overhead: the sandboxed trainer fed by the supervisor against a bare PyTorch loop.

Same model (the Zaremba small LSTM, baselines/lstm_small.py), same batches, same threads. The
harness side is a real run (bwrap, cgroups, every batch handed over the channel); its speed is the
supervisor's own count of tokens over its own training clock between two progress reports after a
warm-up. The bare loop trains the same entry in this process. Rounds alternate (A/B); prints
tokens/s and the ratio harness / bare (target >= 0.97).

    python -m benchmarks.loop_overhead [--entry lstm_small] [--steps 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from benchmarks._common import alternate, machine, timed
from benchmarks._runs import harness_run, in_process_entry, run_data
from harness.feed import TrainFeed

WARMUP = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entry", default="lstm_small", help="a baseline (lstm_sprint: short steps, where a "
                        "per-step cost shows most)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    corpus_data, data = run_data()

    def harness_rate() -> float:
        _, events = harness_run(data, args.entry, {"max_steps": args.steps}, 3600, 0, threads)
        progress = [e for _, e in events if e["type"] == "progress" and e["step"] >= WARMUP]
        first, last = progress[0], progress[-1]
        return (last["tokens"] - first["tokens"]) / (last["train_seconds"] - first["train_seconds"])

    def bare_rate() -> float:
        entry = in_process_entry(corpus_data, args.entry, {})
        feed = TrainFeed(data.train, data.eos_id, entry.hparams.batch_size, entry.hparams.seq_len, None, None, None,
                         len(data.vocab), 0)
        batches = [feed.next_batch(None) for _ in range(args.steps)]
        tensors = [(torch.from_numpy(b.inputs.astype(np.int64)), torch.from_numpy(b.targets.astype(np.int64)))
                   for b in batches]
        for inputs, targets in tensors[:WARMUP]:
            float(entry.train_step(inputs, targets))
        rest = tensors[WARMUP:]
        seconds = timed(lambda: [float(entry.train_step(x, y)) for x, y in rest])
        return sum(y.numel() for _, y in rest) / seconds

    harness, bare = alternate(harness_rate, bare_rate, args.rounds)
    print(f"machine: {machine()}")
    print(f"model: {args.entry}, {args.steps} steps ({WARMUP} warm-up); {args.rounds} rounds each")
    print(f"harness trainer: {harness:,.0f} tokens/s   bare loop: {bare:,.0f} tokens/s")
    print(f"ratio harness/bare: {harness / bare:.3f}  (target >= 0.97)")


if __name__ == "__main__":
    main()
