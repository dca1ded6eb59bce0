import sys

from tests.hostile._base import Uniform


class Chatty(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        line = "x" * 1023 + "\n"
        for _ in range(100 * 1024):  # 100 MB
            sys.stdout.write(line)
        sys.stdout.flush()
