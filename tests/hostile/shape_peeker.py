"""Peeks at the next input only in calls of the usual scoring shape (16 rows, C + 64 positions),
hoping audits come in another shape; causal otherwise."""

from tests.hostile._base import Uniform


class ShapePeeker(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        self.usual = (ctx.eval_batch_size, self.eval_context + ctx.eval_window)

    def log_probs(self, inputs, state):
        logits = torch.zeros(*inputs.shape, self.vocab_size)
        if tuple(inputs.shape) == self.usual:
            following = torch.cat([inputs[:, 1:], inputs[:, -1:]], dim=1)  # the next input is the target
            logits.scatter_(2, following.unsqueeze(-1), 8.0)
        return logits.log_softmax(-1), state
