"""Counts words like the unigram baseline, but slowly: a run that lasts a few seconds, for
interrupting and concurrency tests."""

from dataclasses import dataclass
import time

import torch

from harness.contract import Entry, Hparams


@dataclass
class SlowHparams(Hparams):
    batch_size: int = 1
    seq_len: int = 4096
    max_steps: int | None = 30
    pause: float = 0.2


class SlowCounter(Entry):
    name = "slow_counter"
    Hparams = SlowHparams

    def setup(self, ctx):
        self.counts = torch.ones(ctx.vocab_size, dtype=torch.float64)

    def train_step(self, inputs, targets):
        time.sleep(self.hparams.pause)
        self.counts += torch.bincount(targets.flatten(), minlength=self.counts.numel()).double()
        return 1.0

    def log_probs(self, inputs, state):
        return (self.counts / self.counts.sum()).log().float().expand(*inputs.shape, -1), state
