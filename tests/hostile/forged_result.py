"""Reports its own result: perplexity 1.0 with every check passed."""


from tests.hostile._channel import forge
from tests.hostile._base import Uniform


class ReportsSuccess(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        forge({"type": "result", "status": "ok", "valid_ppl": 1.0, "test_ppl": 1.0,
               "checks": {"normalised": "passed", "causality": "passed", "weights": "passed"}})
