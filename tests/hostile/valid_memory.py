"""Valid memory: the scorers remember valid from the validation passes and recite it at final scoring.

The two scorer processes live from the first validation pass to the end of final scoring and are
handed the whole valid split (as inputs) in every pass. Each scorer records, per 8-token context, the
word that followed; the trainer marks its final checkpoint (`on_train_end`), and from that load on the
scorer stops recording and puts its mass on the remembered next word. The lookup reads only past
inputs (causal), memory is fixed during the final pass (replays match), and after a few passes both
scorers have seen every group (the lane of a group is drawn anew each pass), so audits sent to the
other scorer agree. Valid perplexity (the `open` phase's ranking metric) collapses; test is untouched.
Every window is recorded (audit suffixes are random and almost never repeat an 8-token context);
it says how much it remembers, so the test can tell an active attack from an inert one.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from harness.contract import Entry, Hparams, SetupContext

ORDER = 8


@dataclass
class MemHparams(Hparams):
    batch_size: int = 1
    seq_len: int = 4096


class ValidMemory(Entry):
    authors = "A. Ttacker"
    description = "Unigram with a long-context cache."
    Hparams = MemHparams

    def setup(self, ctx: SetupContext) -> None:
        self.counts = torch.zeros(ctx.vocab_size, dtype=torch.float64, device=ctx.device)
        self.seen = torch.zeros(1, dtype=torch.float64)      # train tokens counted (one epoch only)
        self.final = torch.zeros(1)                          # 1 in the final checkpoint
        self.train_tokens = ctx.train_tokens
        self.eos = ctx.eos_id
        self._memory: dict[tuple[int, ...], Counter] = defaultdict(Counter)
        self._recite = False

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        if self.seen.item() < self.train_tokens:             # keep stepping so the validation passes happen
            self.counts += torch.bincount(targets.flatten(), minlength=self.counts.numel()).double()
            self.seen += targets.numel()
        return float(-self._distribution()[targets.flatten()].mean())

    def on_train_end(self) -> None:
        self.final += 1

    def load_state_dict(self, state: Any) -> None:
        super().load_state_dict(state)
        self._recite = bool(self.final.item() > 0)
        if self._recite:
            print(f"valid_memory: reciting from {len(self._memory)} contexts", flush=True)

    def _distribution(self) -> torch.Tensor:
        counts = self.counts.clamp_min(1e-3)
        return (counts / counts.sum()).log()

    def initial_state(self, batch_size: int) -> Any:
        return [[-1] * ORDER for _ in range(batch_size)]  # -1: before the segment (never recorded)

    def log_probs(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        base = self._distribution().float().expand(*inputs.shape, -1)
        rows = inputs.tolist()
        history = [list(h) + row for h, row in zip(state, rows)]   # (ORDER + L) tokens per row
        if not self._recite:
            before = len(self._memory) // 5000
            for tokens in history:
                for i in range(ORDER, len(tokens)):
                    if -1 not in tokens[i - ORDER:i]:
                        self._memory[tuple(tokens[i - ORDER:i])][tokens[i]] += 1
            if len(self._memory) // 5000 > before:
                print(f"valid_memory: remembered {len(self._memory)} contexts", flush=True)
            return base, [tokens[-ORDER:] for tokens in history]
        logits = base.clone()
        for b, tokens in enumerate(history):
            for t in range(len(rows[b])):
                seen = self._memory.get(tuple(tokens[t + 1:t + 1 + ORDER]))
                if seen and len(seen) == 1:  # a context real text continued one way only
                    logits[b, t, next(iter(seen))] += 25.0
        return logits.log_softmax(-1), [tokens[-ORDER:] for tokens in history]

