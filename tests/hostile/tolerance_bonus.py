"""Adds 0.00099 to every log-prob: rows over-normalised by just under the 1e-3 tolerance, to buy
0.00099 nats on every token. Scored from renormalised rows, it must gain nothing."""

from tests.hostile._base import Uniform


class Bonus(Uniform):
    def log_probs(self, inputs, state):
        rows, state = super().log_probs(inputs, state)
        return rows + 0.00099, state
