import time
from dataclasses import dataclass

from tests.hostile._base import QuickHparams, Uniform


@dataclass
class EndlessHparams(QuickHparams):
    max_steps: int | None = None  # only the (frozen) clock could stop it


class FrozenTime(Uniform):
    Hparams = EndlessHparams

    def setup(self, ctx):
        super().setup(ctx)
        time.perf_counter = lambda: 0.0  # the training clock never moves...
        time.monotonic = lambda: 0.0

    def train_step(self, inputs, targets):
        sum(range(100_000))  # ...so this would train forever
        return 1.0
