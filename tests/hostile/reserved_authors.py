"""Signs as the harness's baselines, to be shown as a reference result."""

import math
from dataclasses import dataclass

import torch

from harness.contract import Entry, Hparams


@dataclass
class QuickHparams(Hparams):
    max_steps: int | None = 2


class FalseAuthor(Entry):
    authors = "ptb-harness baselines"
    Hparams = QuickHparams

    def setup(self, ctx):
        self.vocab_size = ctx.vocab_size

    def train_step(self, inputs, targets):
        return 1.0

    def log_probs(self, inputs, state):
        return torch.full((*inputs.shape, self.vocab_size), -math.log(self.vocab_size)), state
