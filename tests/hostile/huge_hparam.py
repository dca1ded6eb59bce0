from dataclasses import dataclass

from torch import nn

from harness.contract import Hparams
from tests.hostile._base import Uniform


@dataclass
class HugeHparams(Hparams):
    hidden: int = 10**12


class Enormous(Uniform):
    Hparams = HugeHparams

    def setup(self, ctx):
        super().setup(ctx)
        self.embed = nn.Embedding(ctx.vocab_size, self.hparams.hidden)
