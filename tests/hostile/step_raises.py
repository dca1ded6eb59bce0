from tests.hostile._base import Uniform


class FailsLater(Uniform):
    steps = 0

    def train_step(self, inputs, targets):
        self.steps += 1
        if self.steps == 4:
            raise IndexError("step 3 goes out of range")
        return 1.0
