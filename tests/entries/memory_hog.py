"""Allocates far more than its memory budget, a block at a time, in train_step."""

import torch

from harness.contract import Entry


class MemoryHog(Entry):
    def setup(self, ctx):
        self.vocab_size = ctx.vocab_size
        self.hoard = []

    def train_step(self, inputs, targets):
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched so that it is resident
        self.hoard.append(block)
        return 1.0

    def log_probs(self, inputs, state):
        return torch.full((*inputs.shape, self.vocab_size), -torch.log(torch.tensor(float(self.vocab_size)))), state
