import time

from tests.hostile._base import Uniform


class FrozenTime(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        time.perf_counter = lambda: 0.0  # the training clock never moves...
        time.monotonic = lambda: 0.0

    def train_step(self, inputs, targets):
        sum(range(100_000))  # ...so this would train forever
        return 1.0
