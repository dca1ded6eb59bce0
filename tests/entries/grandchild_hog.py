"""Holds twice its memory budget in a helper process started by the trainer's `setup`: memory is
counted per sandboxed process tree (the trainer's cgroup), not per interpreter. The hostile corpus
covers the same in a scorer; here the budget is long enough that the kernel's limit, not the clock,
ends the run whatever the machine's load."""

import subprocess
import sys

import torch

from harness.contract import Entry

HOG = "import time; block = bytearray({size}); block[::4096] = b'x' * len(block[::4096]); time.sleep(600)"


class GrandchildHog(Entry):
    def setup(self, ctx):
        self.vocab_size = ctx.vocab_size
        helper = subprocess.Popen([sys.executable, "-c", HOG.format(size=2 * ctx.budget.memory_bytes)])
        helper.wait()  # the kernel ends it at the limit; the run must end out of memory

    def train_step(self, inputs, targets):
        return 1.0

    def log_probs(self, inputs, state):
        return torch.full((*inputs.shape, self.vocab_size), -torch.log(torch.tensor(float(self.vocab_size)))), state
