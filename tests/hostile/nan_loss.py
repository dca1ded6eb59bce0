from tests.hostile._base import Uniform


class Diverges(Uniform):
    def train_step(self, inputs, targets):
        return float("nan")
