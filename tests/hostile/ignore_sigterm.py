import signal
import time

from tests.hostile._base import Uniform


class Stubborn(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def train_step(self, inputs, targets):
        time.sleep(100_000)
        return 1.0
