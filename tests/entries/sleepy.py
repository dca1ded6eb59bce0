"""A train_step that never returns: the harness must kill it at budget plus grace."""

import time

import torch

from harness.contract import Entry


class Sleepy(Entry):
    def setup(self, ctx):
        self.vocab_size = ctx.vocab_size

    def train_step(self, inputs, targets):
        time.sleep(10_000)
        return 0.0

    def log_probs(self, inputs, state):
        return torch.full((*inputs.shape, self.vocab_size), -torch.log(torch.tensor(float(self.vocab_size)))), state
