from pathlib import Path

from tests.hostile._base import Uniform


class Deleter(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        for path in sorted(Path(__file__).resolve().parent.parent.rglob("*.py")):
            path.unlink()
