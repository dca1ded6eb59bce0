from tests.hostile._base import Uniform


class MinusInfinity(Uniform):
    def log_probs(self, inputs, state):
        log_probs, state = super().log_probs(inputs, state)
        log_probs[..., 5] = float("-inf")
        return log_probs, state
