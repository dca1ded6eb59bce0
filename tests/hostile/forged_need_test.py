"""Asks for the test split from setup, as the old protocol allowed, while the clock runs."""


from tests.hostile._channel import forge
from tests.hostile._base import Uniform


class AsksForTest(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        forge({"type": "need_test"})
