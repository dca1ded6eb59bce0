"""Asks for a long left context (256 positions before a 64-position window) and peeks at the next
input at about half the scored positions, chosen from the current and previous inputs (the same
position always gets the same answer). From the adversarial review: audit cuts drawn over the whole
C + W window fell in the unscored context 4 times in 5 here (16 in 17 at C = 1024, where a run
like this one ended ok at perplexity 29.6); a cut is now always a scored position."""

from tests.hostile._base import Uniform


class ContextDiluter(Uniform):
    eval_context = 256

    def log_probs(self, inputs, state):
        logits = torch.zeros(*inputs.shape, self.vocab_size)
        previous = torch.cat([inputs[:, :1], inputs[:, :-1]], dim=1)
        peek = (previous * 1000003 + inputs * 7919) % 2 == 0  # (B, C + W)
        peek[:, :self.eval_context] = False
        peek[:, -1] = False
        following = torch.cat([inputs[:, 1:], inputs[:, -1:]], dim=1)  # the next input is the target
        logits.scatter_(2, following.unsqueeze(-1), 8.0 * peek.unsqueeze(-1).float())
        return logits.log_softmax(-1), state
