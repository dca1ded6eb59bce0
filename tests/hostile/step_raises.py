from tests.hostile._base import Uniform


class FailsLater(Uniform):
    steps = 0

    def train_step(self, inputs, targets):
        self.steps += 1
        if self.steps == 2:
            raise IndexError("the second step goes out of range")
        return 1.0
