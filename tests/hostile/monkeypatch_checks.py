"""Fakes normalisation from inside: patches the sandboxed scorer's checks and the harness's own
check function (as far as this process can reach them), then returns raw logits."""

import sys

import numpy as np

from tests.hostile._base import Uniform


def patch_everything():
    import harness.sandboxed.scorer as scorer

    for module in (sys.modules["__main__"], scorer):  # the scorer runs as __main__
        if hasattr(module, "Scorer"):
            module.Scorer.check = lambda self, out, rows, cols: out  # no type, shape or dtype check here
    try:
        import harness.scoring as scoring  # the supervisor's module, if this process can import it

        scoring.check_rows = lambda rows, vocab_size, tol: torch.zeros(rows.shape[:2])
    except ImportError:
        pass
    torch.logsumexp = lambda tensor, dim, keepdim=False: torch.zeros(tensor.shape[:-1])
    torch.Tensor.logsumexp = lambda self, dim, keepdim=False: torch.zeros(self.shape[:-1])
    np.logaddexp = lambda a, b: np.zeros_like(a)


class Patcher(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        patch_everything()

    def log_probs(self, inputs, state):
        return torch.zeros(*inputs.shape, self.vocab_size), state  # logits: logsumexp is log(V), not 0
