from tests.hostile._base import Uniform


class Integers(Uniform):
    def log_probs(self, inputs, state):
        log_probs, state = super().log_probs(inputs, state)
        return log_probs.long(), state
