from tests.hostile._base import Uniform


class BadSetup(Uniform):
    def setup(self, ctx):
        raise ValueError("setup cannot find its config")
