"""Training-loop overhead: the harness's loop against a bare PyTorch loop, same model, same batches.

Both train the Zaremba small LSTM (baselines/lstm_small.py) for the same number of steps on the
same PTB batches in this one process, alternating A/B rounds. Prints tokens/s of each and the
ratio harness / bare (target >= 0.97).

    python benchmarks/loop_overhead.py [--steps 150] [--rounds 3]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import REPO, alternate, corpus, machine, timed
from harness.budget import RunLimits, TrainClock
from harness.contract import Budget, SetupContext
from harness.entries import build_hparams, import_entry_class
from harness.runner import TrainStream, train


class NullReporter:
    def send(self, message: dict) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = corpus()
    cls = import_entry_class(REPO / "baselines" / "lstm_small.py")
    hparams = build_hparams(cls.Hparams, {"max_steps": args.steps})
    device = torch.device("cpu")
    stream = TrainStream(data.split("train"), data.eos_id, hparams.batch_size, hparams.seq_len, device)

    def fresh_entry():
        torch.manual_seed(0)
        entry = cls()
        entry.hparams = hparams
        entry.setup(SetupContext(data.vocab_size, data.vocab, data.eos_id, device, 0, Budget(3600, 2**33),
                                 hparams, len(stream), data.split("train").numel()))
        entry.on_epoch_start(0)
        return entry

    def harness_loop() -> float:
        entry = fresh_entry()
        limits = RunLimits(seconds=3600, memory_bytes=2**33, evals=0)
        return timed(lambda: train(entry, stream, hparams, TrainClock(3600), limits, NullReporter(), lambda s: 0.0))

    def bare_loop() -> float:
        entry = fresh_entry()

        def loop() -> None:
            for step, (inputs, targets) in enumerate(stream):
                if step == args.steps:
                    break
                float(entry.train_step(inputs, targets))

        return timed(loop)

    harness_s, bare_s = alternate(harness_loop, bare_loop, args.rounds)
    tokens = args.steps * hparams.batch_size * hparams.seq_len
    print(f"machine: {machine()}")
    print(f"model: lstm_small, {args.steps} steps of {hparams.batch_size}x{hparams.seq_len}, {args.rounds} rounds each")
    print(f"harness loop: {tokens / harness_s:,.0f} tokens/s   bare loop: {tokens / bare_s:,.0f} tokens/s")
    print(f"ratio harness/bare: {bare_s / harness_s:.3f}  (target >= 0.97)")


if __name__ == "__main__":
    main()
