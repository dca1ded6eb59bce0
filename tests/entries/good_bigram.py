"""A deterministic add-one bigram model, counted in one epoch: a good entry that scores fast.

Only the trainer holds the dense 10,000 x 10,000 count table (400 MB) it accumulates into. Its
checkpoint is compact (the bigrams seen and their counts), and the scorer keeps them sparse: each
call builds just the rows it returns. The tests run it under a 2 GiB limit and a 4 s budget, with
loading charged to training time beyond a small allowance; a scorer that rebuilt the dense table
(twice, with its normalised copy) loaded slowly enough near that limit to time out."""


from dataclasses import dataclass

import torch

from harness.contract import Entry, Hparams


@dataclass
class BigramHparams(Hparams):
    batch_size: int = 1
    seq_len: int = 8192
    max_epochs: int | None = 1


class CompactBigram(Entry):
    name = "good_bigram"
    Hparams = BigramHparams

    def setup(self, ctx):
        self.vocab_size = ctx.vocab_size
        if ctx.role == "trainer":  # the scorer gets its counts from the checkpoint, sparse
            self.counts = torch.ones(ctx.vocab_size, ctx.vocab_size)  # (previous, next), add-one

    def train_step(self, inputs, targets):
        self.counts.index_put_((inputs.flatten(), targets.flatten()), torch.ones(targets.numel()), accumulate=True)
        return 1.0

    def state_dict(self):
        seen = (self.counts > 1).nonzero()  # (K, 2): the bigrams counted
        return {"pairs": seen, "counts": self.counts[seen[:, 0], seen[:, 1]]}

    def load_state_dict(self, state):
        pairs, counts = state["pairs"], state["counts"]  # (K, 2), (K,): add-one counts, > 1
        self.extra = torch.sparse_coo_tensor(pairs.t(), counts - 1, (self.vocab_size, self.vocab_size)).coalesce()
        totals = torch.full((self.vocab_size,), float(self.vocab_size)).index_add_(0, pairs[:, 0], counts - 1)
        self.log_totals = totals.log()  # (V,)

    def log_probs(self, inputs, state):
        rows = self.extra.index_select(0, inputs.flatten()).to_dense() + 1  # (B * T, V) add-one counts
        return rows.log_().view(*inputs.shape, -1) - self.log_totals[inputs].unsqueeze(-1), state  # (B, T, V)
