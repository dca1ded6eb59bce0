from tests.hostile._base import Uniform


class LearnsWhileScored(Uniform):
    def log_probs(self, inputs, state):
        self.weights += 1.0  # "dynamic evaluation": updates itself on the split being scored
        return super().log_probs(inputs, state)
