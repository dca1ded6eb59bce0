import time

from tests.hostile._base import Uniform


class OneLongStep(Uniform):
    def train_step(self, inputs, targets):
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:  # trains "inside" one step, far past the budget
            sum(range(10_000))
        return 1.0
