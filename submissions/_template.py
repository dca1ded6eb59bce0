"""A small LSTM language model: the starting point for your entry.

Copy it with `harness new my_entry`, edit, then `harness check submissions/my_entry.py` (seconds)
and `harness run my_entry --budget 60` (a short real run). Read harness/contract.py once: it is the
whole contract, with the shapes and the rules of scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.contract import Entry, Hparams, SetupContext, ValidationInfo


@dataclass
class LstmHparams(Hparams):
    batch_size: int = 20
    seq_len: int = 35
    embed: int = 200
    hidden: int = 200
    layers: int = 2
    dropout: float = 0.0
    lr: float = 1e-3
    clip: float = 5.0
    keep_best: bool = True


class LstmModel(nn.Module):
    def __init__(self, vocab: int, hp: LstmHparams) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hp.embed)
        self.lstm = nn.LSTM(hp.embed, hp.hidden, hp.layers, batch_first=True, dropout=hp.dropout)
        self.drop = nn.Dropout(hp.dropout)
        self.head = nn.Linear(hp.hidden, vocab)

    def forward(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        out, state = self.lstm(self.drop(self.embed(x)), state)  # (B, T, H)
        return self.head(self.drop(out)), state  # logits (B, T, V)


class Lstm(Entry):
    authors = "your name"
    description = "2-layer LSTM, Adam."
    Hparams = LstmHparams

    def setup(self, ctx: SetupContext) -> None:
        self.model = LstmModel(ctx.vocab_size, self.hparams).to(ctx.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.hparams.lr)
        # Names starting with _ are scratch: the default state_dict (the checkpoint) leaves them out.
        self._train_state = None  # hidden state carried across steps (the stream is contiguous)
        self._best: tuple[float, dict[str, torch.Tensor]] | None = None  # best validation so far

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, state = self.model(inputs, self._train_state)
        self._train_state = tuple(s.detach() for s in state)  # truncated back-propagation
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.hparams.clip)
        self.optimizer.step()
        return loss.detach()

    def on_validation(self, info: ValidationInfo) -> None:
        # info is the validation perplexity (a float) with the schedule: info.pass_index, info.passes,
        # info.step, info.train_seconds, info.last. Keep the best weights seen so far.
        if self._best is None or info < self._best[0]:
            self._best = (float(info), {k: v.detach().clone() for k, v in self.model.state_dict().items()})

    def on_train_end(self) -> None:
        # Called once after the last step, before the final checkpoint: score the best weights seen
        # on validation rather than the last ones (the supervisor scores valid and test from them).
        if self._best is not None and self.hparams.keep_best:
            self.model.load_state_dict(self._best[1])

    def log_probs(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        logits, state = self.model(inputs, state)
        return logits.log_softmax(-1), state  # (B, T, V)
