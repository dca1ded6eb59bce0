import subprocess

from tests.hostile._base import Uniform


class ForkBomb(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        self.children = []
        while len(self.children) < 1000:  # a ceiling of its own, so a test can never take a machine down
            try:
                self.children.append(subprocess.Popen(["sleep", "600"]))
            except OSError:
                continue
