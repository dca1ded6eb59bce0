"""Asks for 2,000 tokens of left context, over the 1,024 cap (each block of rows would be huge)."""

from tests.hostile._base import Uniform


class LongMemory(Uniform):
    eval_context = 2000
