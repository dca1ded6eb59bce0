"""Stops the clock the old way: a forged `phase` message, then 12 s of "untimed" training."""

import time

from tests.hostile._channel import forge
from tests.hostile._base import Uniform


class ForgesPhase(Uniform):
    def train_step(self, inputs, targets):
        forge({"type": "phase", "phase": "eval"})
        time.sleep(12)  # three budgets, if the clock believed the message
        return 1.0
