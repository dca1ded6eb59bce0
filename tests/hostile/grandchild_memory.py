import subprocess
import sys
import time

from tests.hostile._base import Uniform

HOG = "import time; block = bytearray({size}); block[::4096] = b'x' * len(block[::4096]); time.sleep(600)"


class HidesMemoryInAChild(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        code = HOG.format(size=2 * ctx.budget.memory_bytes)
        self.helper = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(30)
