"""A deliberately small LSTM (fast on CPU) for end-to-end tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.contract import Entry, Hparams, SetupContext


@dataclass
class TinyHparams(Hparams):
    batch_size: int = 32
    seq_len: int = 32
    hidden: int = 64
    lr: float = 3e-3


class TinyLstm(Entry):
    name = "tiny_lstm"
    authors = "tests"
    description = "64-unit LSTM for quick end-to-end runs."
    Hparams = TinyHparams

    def setup(self, ctx: SetupContext) -> None:
        hp = self.hparams
        self.embed = nn.Embedding(ctx.vocab_size, hp.hidden).to(ctx.device)
        self.lstm = nn.LSTM(hp.hidden, hp.hidden, batch_first=True).to(ctx.device)
        self.head = nn.Linear(hp.hidden, ctx.vocab_size).to(ctx.device)
        params = [*self.embed.parameters(), *self.lstm.parameters(), *self.head.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=hp.lr)
        self.state = None

    def _forward(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        out, state = self.lstm(self.embed(inputs), state)
        return self.head(out), state

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, state = self._forward(inputs, self.state)
        self.state = tuple(s.detach() for s in state)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def log_probs(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        logits, state = self._forward(inputs, state)
        return logits.log_softmax(-1), state
