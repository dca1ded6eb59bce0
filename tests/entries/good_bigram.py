"""A deterministic add-one bigram model, counted in one epoch: a good entry that scores fast."""

from dataclasses import dataclass

import torch

from harness.contract import Entry, Hparams


@dataclass
class BigramHparams(Hparams):
    batch_size: int = 1
    seq_len: int = 8192
    max_epochs: int | None = 1


class AddOneBigram(Entry):
    name = "good_bigram"
    Hparams = BigramHparams

    def setup(self, ctx):
        self.counts = torch.ones(ctx.vocab_size, ctx.vocab_size)  # (previous, next)

    def train_step(self, inputs, targets):
        self.counts.index_put_((inputs.flatten(), targets.flatten()), torch.ones(targets.numel()), accumulate=True)
        return 1.0

    def load_state_dict(self, state):
        self.table = None  # a cache of the loaded counts: rebuilt on first use
        super().load_state_dict(state)

    def log_probs(self, inputs, state):
        if getattr(self, "table", None) is None:  # normalised once per scorer process, after loading
            self.table = (self.counts / self.counts.sum(1, keepdim=True)).log()  # (V, V)
        return self.table[inputs], state  # (B, T, V)
