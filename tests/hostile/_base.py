"""A well-behaved uniform model the hostile entries start from (files starting with _ are not entries)."""

import math

import torch

from harness.contract import Entry


class Uniform(Entry):
    def setup(self, ctx):
        self.vocab_size = ctx.vocab_size
        self.weights = torch.zeros(ctx.vocab_size)

    def train_step(self, inputs, targets):
        return 1.0

    def log_probs(self, inputs, state):
        return torch.full((*inputs.shape, self.vocab_size), -math.log(self.vocab_size)), state
