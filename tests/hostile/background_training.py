"""Keeps training in a background thread, in the trainer (during validation passes too, if it can)
and in the scorer while it is scoring."""

import threading
import time

from tests.hostile._base import Uniform


class TrainsInBackground(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        self.table = torch.zeros(ctx.vocab_size)
        threading.Thread(target=self.train_forever, daemon=True).start()

    def train_forever(self):
        generator = torch.Generator().manual_seed(0)
        while True:
            with torch.no_grad():
                self.table.add_(torch.randn(self.table.shape, generator=generator), alpha=0.05)
            time.sleep(0.001)

    def log_probs(self, inputs, state):
        return self.table.expand(*inputs.shape, -1).log_softmax(-1), state
