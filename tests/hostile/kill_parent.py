import os
import signal

from tests.hostile._base import Uniform


class Parricide(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        try:
            os.kill(os.getppid(), signal.SIGKILL)
        except OSError:
            pass
