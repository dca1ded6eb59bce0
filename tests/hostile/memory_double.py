import torch

from tests.hostile._base import Uniform


class Hoarder(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        self.hoard = []
        blocks = 2 * ctx.budget.memory_bytes // (64 * 2**20)
        for _ in range(blocks):  # twice the budget, touched so that it is resident
            self.hoard.append(torch.ones(16 * 2**20))
