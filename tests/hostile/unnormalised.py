import torch

from tests.hostile._base import Uniform


class Logits(Uniform):
    def log_probs(self, inputs, state):
        return torch.zeros(*inputs.shape, self.vocab_size), state  # logits, not log-probabilities
