"""Signs as the harness's baselines, to be shown as a reference result."""

from tests.hostile._base import Uniform


class FalseAuthor(Uniform):
    authors = "ptb-harness baselines"
