"""Peeks at the next input in about a quarter of the rows it scores, chosen by a hash of the row's
first inputs in the window: the same row always gets the same answer whatever batch it comes in,
so replays cannot tell, and only an audit of a row it cheats in shows it. A bet that a few audits
miss those rows: twelve audits per pass, each on one row of a window drawn over every scored
position, all miss with probability about 0.75^12 = 3% per pass, 0.75^36 = 3e-5 in a run with one
validation pass and the final scoring. (Deciding per call instead, on the whole batch, gives it
away sooner: a row replayed among other rows gets the other answer.)"""

import zlib

from tests.hostile._base import Uniform


class PartialPeeker(Uniform):
    def log_probs(self, inputs, state):
        logits = torch.zeros(*inputs.shape, self.vocab_size)
        for row in range(inputs.shape[0]):
            if zlib.crc32(inputs[row, :8].numpy().tobytes()) % 4 == 0:
                following = torch.cat([inputs[row, 1:], inputs[row, -1:]])  # the next input is the target
                logits[row].scatter_(1, following.unsqueeze(-1), 8.0)
        return logits.log_softmax(-1), state
