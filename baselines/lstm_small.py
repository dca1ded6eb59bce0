"""Zaremba et al. 2014, "Recurrent Neural Network Regularization", the small non-regularised LSTM.

Published PTB perplexity: valid 120.7, test 114.5 (Table 1, "Non-regularized LSTM").
Configuration of the paper's `small` setting: 2 layers of 200 units, no dropout, weights
initialised uniformly in [-0.1, 0.1], SGD with learning rate 1, gradients clipped to global norm 5,
back-propagation through 20 steps, batch 20, the learning rate halved after every epoch from the
5th on, 13 epochs. The loss is summed over the 20 steps and averaged over the batch, as in the
paper's code, so its gradients match learning rate 1. On a 2-core CPU the 13 epochs take about an
hour (benchmarks/RESULTS.md); run it with `harness run lstm_small --budget 5400`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.contract import Entry, Hparams, SetupContext


@dataclass
class ZarembaSmallHparams(Hparams):
    batch_size: int = 20
    seq_len: int = 20
    max_epochs: int | None = 13
    hidden: int = 200
    layers: int = 2
    init_scale: float = 0.1
    lr: float = 1.0
    lr_decay: float = 0.5
    decay_after_epoch: int = 4
    clip: float = 5.0


class ZarembaLstm(nn.Module):
    def __init__(self, vocab: int, hp: ZarembaSmallHparams) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hp.hidden)
        self.lstm = nn.LSTM(hp.hidden, hp.hidden, hp.layers, batch_first=True)
        self.head = nn.Linear(hp.hidden, vocab)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -hp.init_scale, hp.init_scale)

    def forward(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        out, state = self.lstm(self.embed(x), state)  # (B, T, H)
        return self.head(out), state  # (B, T, V)


class LstmSmall(Entry):
    name = "lstm_small"
    authors = "ptb-harness baselines (after Zaremba, Sutskever & Vinyals 2014)"
    description = "Zaremba et al. 2014 small LSTM, 2x200, no dropout, SGD lr 1 (published test 114.5)."
    Hparams = ZarembaSmallHparams

    def setup(self, ctx: SetupContext) -> None:
        self.model = ZarembaLstm(ctx.vocab_size, self.hparams).to(ctx.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.hparams.lr)
        self.train_state = None

    def on_epoch_start(self, epoch: int) -> None:
        hp = self.hparams
        lr = hp.lr * hp.lr_decay ** max(epoch + 1 - hp.decay_after_epoch, 0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.train_state = None  # each epoch starts from a zero state, as in the paper

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, state = self.model(inputs, self.train_state)
        self.train_state = tuple(s.detach() for s in state)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())  # mean over B * T
        self.optimizer.zero_grad()
        (loss * inputs.shape[1]).backward()  # summed over steps, averaged over the batch
        nn.utils.clip_grad_norm_(self.model.parameters(), self.hparams.clip)
        self.optimizer.step()
        return loss.detach()

    def log_probs(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        logits, state = self.model(inputs, state)
        return logits.log_softmax(-1), state
