"""From the scorer: answers request 1 before request 0 (its slot still holds stale rows)."""


from tests.hostile._channel import forge
from tests.hostile._base import Uniform


class AnswersAhead(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        self.forged = ctx.role != "scorer"

    def log_probs(self, inputs, state):
        if not self.forged:
            self.forged = True
            forge({"type": "rows", "id": 1})
        return super().log_probs(inputs, state)
