"""Raises in train_step at step 3: must fail alone, with its traceback stored."""

import torch

from harness.contract import Entry


class Crashing(Entry):
    def setup(self, ctx):
        self.vocab_size = ctx.vocab_size
        self.steps = 0

    def train_step(self, inputs, targets):
        self.steps += 1
        if self.steps == 3:
            raise ValueError("deliberate failure at step 3")
        return 1.0

    def log_probs(self, inputs, state):
        return torch.full((*inputs.shape, self.vocab_size), -torch.log(torch.tensor(float(self.vocab_size)))), state
