"""Looks for the valid or test ids in its own process: every object the garbage collector tracks
(and what they hold), and every local of every frame up the stack, in the trainer and the scorer.
It would memorise whatever it found; finding nothing, it stays a uniform model."""

import gc
import sys
import warnings

import numpy as np

from tests.hostile._base import Uniform

SPLIT_TOKENS = 20_000  # valid has 73,760 tokens and test 82,430; a training batch has 700


def looks_like_split(value):
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "iu" and value.size >= SPLIT_TOKENS
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() and value.numel() >= SPLIT_TOKENS
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value) >= 4 * SPLIT_TOKENS
    if isinstance(value, (list, tuple)) and len(value) >= SPLIT_TOKENS:
        return all(isinstance(item, int) for item in value[:100])
    return False


def candidates():
    """(where, value) for everything reachable in one step from gc's objects and the stack's locals."""
    for obj in gc.get_objects():
        yield "gc", obj
        for inner in gc.get_referents(obj):  # numpy arrays are not tracked themselves
            yield "gc referent", inner
    frame = sys._getframe()
    while frame is not None:
        where = f"frame {frame.f_code.co_name}"
        for value in list(frame.f_locals.values()):
            yield where, value
            for inner in list(getattr(value, "__dict__", {}).values()):
                yield where, inner
        frame = frame.f_back


def snoop(role):
    with warnings.catch_warnings():  # touching deprecated module attributes warns
        warnings.simplefilter("ignore")
        for where, value in candidates():
            if looks_like_split(value):
                shape = getattr(value, "shape", len(value))
                raise RuntimeError(f"the {role} holds split-sized ids ({type(value).__name__} {shape}, {where})")
    print(f"gc_snoop: nothing split-sized in the {role}", flush=True)


class Snoop(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        self.calls = 0
        if ctx.role == "scorer":  # the scorer's setup is untimed; the trainer looks once it is fed
            snoop("scorer")

    def train_step(self, inputs, targets):
        if self.calls == 0:
            snoop("trainer")
        self.calls += 1
        return 1.0

    def log_probs(self, inputs, state):
        if self.calls % 40 == 0:
            snoop("scorer")
        self.calls += 1
        return super().log_probs(inputs, state)
