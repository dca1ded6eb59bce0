"""Scoring throughput: the supervisor's scoring (two sandboxed scorers, every check and audit) against a
bare PyTorch evaluation loop over the same model.

Same model (lstm_small after one training step: speed does not depend on the weights), the valid and
test splits, same threads. The harness side is the final scoring phase of a real run: windows built
by the supervisor, full (B, C + W, V) rows through shared memory, finite / normalisation checks and
renormalised NLL in the supervisor, causality audits and replay probes. The bare loop reads each
split as 16 contiguous rows in windows of 64 and sums the target log-probs. Prints tokens/s and
the ratio (target >= 0.90).

A second harness figure scores with the audits off (no causality audit, the one closing replay
probe): the audits make the scorers compute extra windows (a warm audit replays a random number of
the windows before it, about 23% more positions on average), which no amount of speed in the
checks can win back; the two figures separate that from the cost of checking every row.
`--entry unigram` times a model that costs almost nothing to run: its ratio is the checks alone.

    python -m benchmarks.scoring_throughput [--rounds 2] [--entry lstm_small]
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np
import torch

from benchmarks._common import alternate, machine, timed
from benchmarks._runs import harness_run, in_process_entry, run_data
from harness.scoring import EvalProtocol, ScorePass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--entry", default="lstm_small", help="a baseline with log_probs and initial_state")
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    corpus_data, data = run_data()
    tokens = data.valid.size + data.test.size

    to_result: list[float] = []

    def harness_scoring(audits: bool = True) -> float:
        """The supervisor's own timing of the final scoring (fresh scorers up, checkpoint loaded into
        both, valid and test scored with every check and audit); storing and clean-up are printed apart."""
        protocol = EvalProtocol() if audits else EvalProtocol(causality_audits=0, replay_probes=0)
        result, events = harness_run(data, args.entry, {"max_steps": 1}, 3600, 0, threads, protocol)
        assert result.ok and result.final_scoring_seconds, result.reason
        if audits:
            start = next(t for t, e in events if e.get("phase") == "scoring")
            to_result.append(events[-1][0] - start)
        return result.final_scoring_seconds

    def bare_scoring() -> float:
        entry = in_process_entry(corpus_data, args.entry, {})
        entry.model.eval() if hasattr(entry, "model") else None

        def run() -> None:
            for split in (data.valid, data.test):
                rows, window = 16, 64
                n = split.size // rows
                ids = torch.from_numpy(np.concatenate([[data.eos_id], split[:-1]]).astype(np.int64))
                inputs = ids[: rows * n].view(rows, n)
                targets = torch.from_numpy(split[: rows * n].astype(np.int64)).view(rows, n)
                with torch.inference_mode():
                    state, total = entry.initial_state(rows), 0.0
                    for start in range(0, n, window):
                        log_probs, state = entry.log_probs(inputs[:, start:start + window], state)
                        total += float(log_probs.gather(-1, targets[:, start:start + window, None]).sum())
        return timed(run)

    lean_s, _ = alternate(lambda: harness_scoring(audits=False), lambda: 0.0, 1)
    harness_s, bare_s = alternate(harness_scoring, bare_scoring, args.rounds)
    print(f"machine: {machine()}")
    print(f"model: {args.entry}; valid + test, {tokens:,} tokens; {args.rounds} rounds each")
    print(f"harness scoring: {tokens / harness_s:,.0f} tokens/s   bare loop: {tokens / bare_s:,.0f} tokens/s")
    print(f"ratio harness/bare: {bare_s / harness_s:.3f}  (target >= 0.90)")
    print(f"positions the scorers compute per position scored (a plan of each protocol, context 0): "
          f"{planned_work(data, EvalProtocol()):.3f} with the audits, "
          f"{planned_work(data, EvalProtocol(causality_audits=0, replay_probes=0)):.3f} without")
    print(f"audits off (one closing replay): {tokens / lean_s:,.0f} tokens/s, ratio {bare_s / lean_s:.3f}")
    print(f"from the scoring phase to the result (with the param count, sentence NLL and clean-up): "
          f"median {sorted(to_result)[len(to_result) // 2]:.1f} s against {harness_s:.1f} s of scoring")


def planned_work(data: Any, protocol: EvalProtocol, passes: int = 20) -> float:
    """Positions in every request of a pass (scoring, padding, replays, shadow streams) over the
    positions scored, valid and test together, averaged over `passes` random plans."""
    sent = scored = 0
    for _ in range(passes):
        for split in (data.valid, data.test):
            plan = ScorePass("split", split, data.eos_id, len(data.vocab), protocol, 0, protocol.window)
            sent += sum(request.inputs.size for request in plan.requests)
            scored += split.size
    return sent / scored


if __name__ == "__main__":
    main()
