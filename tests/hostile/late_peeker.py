"""Late peeker: a unigram that peeks at the next input, but only in windows the audits never copy.

Causality audits copy window k <= 3 of a group (scoring.py `_causal_audit`: k in 1..min(3, windows-1),
or 0), replay probes copy window 0, and only the windows some audit/replay references are fingerprinted.
The state carried between calls is the entry's own object, so it counts the windows of its stream:
from the 5th window of a segment on, position t puts almost all its mass on inputs[:, t + 1], which is
the target of position t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.contract import Entry, Hparams, SetupContext

SAFE_WINDOWS = 4  # windows 0..3 of a stream may be audited or replayed; later ones never are


@dataclass
class PeekHparams(Hparams):
    batch_size: int = 1
    seq_len: int = 4096
    max_epochs: int | None = 1


class LatePeeker(Entry):
    authors = "A. Ttacker"
    description = "Unigram with a small contextual refinement."
    Hparams = PeekHparams

    def setup(self, ctx: SetupContext) -> None:
        self.counts = torch.zeros(ctx.vocab_size, dtype=torch.float64, device=ctx.device)

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        self.counts += torch.bincount(targets.flatten(), minlength=self.counts.numel()).double()
        return float(-self._distribution()[targets.flatten()].mean())

    def _distribution(self) -> torch.Tensor:
        counts = self.counts.clamp_min(1e-3)
        return (counts / counts.sum()).log()

    def initial_state(self, batch_size: int) -> Any:
        return {"window": 0}

    def log_probs(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        window = state["window"] if isinstance(state, dict) else 0
        base = self._distribution().float().expand(*inputs.shape, -1)  # (B, L, V)
        if window < SAFE_WINDOWS or inputs.shape[1] < 2:
            return base, {"window": window + 1}
        logits = base.clone()
        following = inputs[:, 1:].unsqueeze(-1)  # (B, L-1, 1): the target of positions 0..L-2
        logits[:, :-1].scatter_add_(-1, following, torch.full(following.shape, 25.0))
        return logits.log_softmax(-1), {"window": window + 1}
