import torch

from tests.hostile._base import Uniform


class SeesEverything(Uniform):
    def log_probs(self, inputs, state):
        logits = torch.zeros(*inputs.shape, self.vocab_size)
        logits.scatter_(2, inputs.flip(1).unsqueeze(-1), 5.0)  # position t looks at the mirrored window
        return logits.log_softmax(-1), state
