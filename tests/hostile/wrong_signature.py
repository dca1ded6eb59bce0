from tests.hostile._base import Uniform


class OneArgument(Uniform):
    def train_step(self, inputs):
        return 1.0
