"""A well-behaved uniform model the hostile entries start from (files starting with _ are not entries)."""

import math
from dataclasses import dataclass

import torch

from harness.contract import Entry, Hparams


@dataclass
class QuickHparams(Hparams):
    max_steps: int | None = 2  # the attack is the point, not the training: reach scoring at once


class Uniform(Entry):
    Hparams = QuickHparams

    def setup(self, ctx):
        self.vocab_size = ctx.vocab_size
        self.weights = torch.zeros(ctx.vocab_size)

    def train_step(self, inputs, targets):
        return 1.0

    def log_probs(self, inputs, state):
        return torch.full((*inputs.shape, self.vocab_size), -math.log(self.vocab_size)), state
