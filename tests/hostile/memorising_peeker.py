"""A memorising cheater: it reads the next input (the target) at every position, except where it
has seen the same history before, where it repeats what it answered then. An audit that copies a
window it has already scored gets the old rows back; a window scored after its audit gets the
audit's rows. Only a scorer that has not seen the window can tell (a fresh process, say)."""

import hashlib

from tests.hostile._base import Uniform

PEEK = 8.0  # logit bonus for the word it read ahead


def history_key(history, row):
    return hashlib.blake2b(history + row.tobytes(), digest_size=16).digest()


class Memoriser(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        self.answers = {}  # history digest -> the word it boosted there (-1: none)

    def initial_state(self, batch_size):
        return [b""] * batch_size

    def log_probs(self, inputs, state):
        rows, length = inputs.shape
        histories = state if state is not None else [b""] * rows
        ids = inputs.cpu().numpy()
        boosted = torch.full((rows, length), -1, dtype=torch.int64)
        for b in range(rows):
            for t in range(length):
                key = history_key(histories[b], ids[b, :t + 1])
                if key not in self.answers:  # never seen: peek at the next input
                    self.answers[key] = int(ids[b, t + 1]) if t + 1 < length else -1
                boosted[b, t] = self.answers[key]
        logits = torch.zeros(rows, length, self.vocab_size)
        hit = boosted >= 0
        logits[hit] = logits[hit].scatter(1, boosted[hit].unsqueeze(1), PEEK)
        new_state = [history_key(histories[b], ids[b]) for b in range(rows)]
        return logits.log_softmax(-1), new_state
