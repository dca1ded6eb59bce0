"""Scoring throughput: the harness's test scoring (with every check) against a bare evaluation loop.

Same model (the Zaremba small LSTM, random weights: speed does not depend on them), same test
split, same threads. The bare loop reads the split as 16 contiguous rows in windows of 64 and sums
the target log-probs; the harness adds segmenting, the shape / finite / normalisation checks, the
weight hashes and exact per-token bookkeeping. Prints tokens/s and the ratio (target >= 0.95).

    python benchmarks/scoring_throughput.py [--rounds 3]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import REPO, alternate, corpus, machine, timed
from harness.contract import Budget, SetupContext
from harness.entries import build_hparams, import_entry_class
from harness.scoring import EvalProtocol, score_split, scoring_mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--entry", default="lstm_small")
    args = parser.parse_args()
    data = corpus()
    cls = import_entry_class(REPO / "baselines" / f"{args.entry}.py")
    hparams = build_hparams(cls.Hparams, {})
    device = torch.device("cpu")
    entry = cls()
    entry.hparams = hparams
    entry.setup(SetupContext(data.vocab_size, data.vocab, data.eos_id, device, 0, Budget(600, 2**33),
                             hparams, 1, 1))
    test = data.split("test")
    protocol = EvalProtocol()

    def harness_scoring() -> float:
        def run() -> None:
            with scoring_mode(entry):
                score_split(entry, test, eos_id=data.eos_id, vocab_size=data.vocab_size, device=device,
                            protocol=protocol, split="test")
        return timed(run)

    def bare_scoring() -> float:
        def run() -> None:
            rows = protocol.batch_size
            n = test.numel() // rows
            inputs = torch.cat([torch.tensor([data.eos_id]), test[:-1]])[: rows * n].view(rows, n)
            targets = test[: rows * n].view(rows, n)
            with torch.inference_mode():
                state, total = entry.initial_state(rows), 0.0
                for start in range(0, n, protocol.window):
                    log_probs, state = entry.log_probs(inputs[:, start:start + protocol.window], state)
                    total += float(log_probs.gather(-1, targets[:, start:start + protocol.window, None]).sum())
        return timed(run)

    harness_s, bare_s = alternate(harness_scoring, bare_scoring, args.rounds)
    tokens = test.numel()
    print(f"machine: {machine()}")
    print(f"model: {args.entry}; test split, {tokens:,} tokens; {args.rounds} rounds each")
    print(f"harness scoring: {tokens / harness_s:,.0f} tokens/s   bare loop: {tokens / bare_s:,.0f} tokens/s")
    print(f"ratio harness/bare: {bare_s / harness_s:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
