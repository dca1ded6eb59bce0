import subprocess
import sys

from tests.hostile._base import Uniform

HOG = "import time; block = bytearray({size}); block[::4096] = b'x' * len(block[::4096]); time.sleep(600)"


class HidesMemoryInAChild(Uniform):
    """A helper process holding twice the memory budget, started by the scorer: memory is counted per
    process tree (the cgroup), not per interpreter. The scorer's set-up is untimed up to an allowance,
    so the kernel's limit, not the training clock, decides how this run ends; started in the trainer,
    the same helper raced a 4 s budget and lost on a loaded machine (out of memory after 1.7 s idle,
    past 6 s under CI's load)."""

    def setup(self, ctx):
        super().setup(ctx)
        if ctx.role != "scorer":
            return
        code = HOG.format(size=2 * ctx.budget.memory_bytes)
        self.helper = subprocess.Popen([sys.executable, "-c", code])
        self.helper.wait()  # the kernel ends it (SIGKILL at the limit); the run must end out of memory
