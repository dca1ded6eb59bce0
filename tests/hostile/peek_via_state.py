"""Causal from an empty state, peeking at the next input once it carries one."""

import torch

from tests.hostile._base import Uniform


class PeeksWhenWarm(Uniform):
    def log_probs(self, inputs, state):
        logits = torch.zeros(*inputs.shape, self.vocab_size)
        if state is not None:
            following = torch.cat([inputs[:, 1:], inputs[:, -1:]], dim=1)  # the next input is the target
            logits.scatter_(2, following.unsqueeze(-1), 8.0)
        return logits.log_softmax(-1), "warm"
