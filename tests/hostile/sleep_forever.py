import time

from tests.hostile._base import Uniform


class Sleeper(Uniform):
    def train_step(self, inputs, targets):
        time.sleep(100_000)
        return 1.0
