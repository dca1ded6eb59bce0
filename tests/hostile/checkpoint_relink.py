"""Moves each checkpoint aside and leaves a symlink to it under the expected name: its own
scorer follows the link inside the sandbox, the supervisor must not (it reads the header of the
final checkpoint for the parameter count)."""

import os
import sys

import harness.sandboxed.trainer as trainer

from tests.hostile._base import Uniform

original_save = trainer.save_checkpoint


def save_then_relink(state, path):
    original_save(state, path)
    aside = path.with_name("real-" + path.name)
    os.replace(path, aside)
    os.symlink(aside.name, path)


def patch_trainer(replacement):
    """The trainer runs as `python -m harness.sandboxed.trainer`: its live module is __main__."""
    for module in (sys.modules["__main__"], trainer):
        if hasattr(module, "save_checkpoint"):
            module.save_checkpoint = replacement  # the trainer's own process: this much it may do


class Relinks(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        patch_trainer(save_then_relink)
