"""In the scorer: trains a shadow unigram on the windows it is sent (valid, then test) and swaps it
in every few calls, so later windows are scored by a model that has read the split."""

from tests.hostile._base import Uniform

SWAP_EVERY = 8


class ShadowSwap(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        self.table = torch.full((ctx.vocab_size,), -math.log(ctx.vocab_size))
        self.shadow = torch.ones(ctx.vocab_size)
        self.calls = 0

    def log_probs(self, inputs, state):
        self.shadow += torch.bincount(inputs.flatten(), minlength=self.vocab_size).float()
        self.calls += 1
        if self.calls % SWAP_EVERY == 0:
            self.table = (self.shadow / self.shadow.sum()).log()  # swapped in between two requests
        return self.table.expand(*inputs.shape, -1).clone(), state
