"""Unigram baseline: every word predicted by its train-set frequency, whatever came before.

Reproduces the unigram perplexity of Mikolov's PTB splits: test 639.3, valid 687.0 (maximum
likelihood counts over the 929,589 train tokens, `<eos>` included; every one of the 10,000 types
occurs in train, so no smoothing is needed). Counted in a single epoch through `train_step`.
A word never seen (impossible on PTB, possible on `harness check`'s synthetic data) gets a count
of 1e-3 so that every log-probability stays finite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.contract import Entry, Hparams, SetupContext


@dataclass
class UnigramHparams(Hparams):
    batch_size: int = 1
    seq_len: int = 4096
    max_epochs: int | None = 1


class Unigram(Entry):
    name = "unigram"
    authors = "ptb-harness baselines"
    description = "Train-set word frequencies; ignores context (published PTB test perplexity 639.3)."
    Hparams = UnigramHparams

    def setup(self, ctx: SetupContext) -> None:
        self.counts = torch.zeros(ctx.vocab_size, dtype=torch.float64, device=ctx.device)  # (V,)

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        self.counts += torch.bincount(targets.flatten(), minlength=self.counts.numel()).double()
        return self._nll(targets)

    def _distribution(self) -> torch.Tensor:
        counts = self.counts.clamp_min(1e-3)
        return (counts / counts.sum()).log()  # (V,) float64

    def _nll(self, targets: torch.Tensor) -> float:
        return float(-self._distribution()[targets.flatten()].mean())

    def log_probs(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        log_probs = self._distribution().float()  # (V,)
        return log_probs.expand(*inputs.shape, -1), state  # (B, T, V), no copy
