"""Leaves a marker at the far end of its scorer's shared block (found by walking the call stack to
the scoring server), where the supervisor never reads, and looks for one when a scorer starts.
From a hostile review: the blocks outlived the validation-pass scorers, so the final scorers found
what those wrote there; carrying valid's windows across that way scored valid at 2.65. Every pair
of scorers now gets new blocks: the final scorers find nothing."""

import sys
from dataclasses import dataclass

from tests.hostile._base import QuickHparams, Uniform

MARKER = b"ptb-hostile-shm-carry"


def scoring_server():
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if type(owner).__name__ == "Scorer":
            return owner
        frame = frame.f_back
    return None


@dataclass
class UntilTheBudget(QuickHparams):
    max_steps: int | None = None  # trains to the end of its budget: there is a validation pass
    batch_size: int = 1
    seq_len: int = 4096


class CarriesThroughSharedMemory(Uniform):
    Hparams = UntilTheBudget

    def setup(self, ctx):
        super().setup(ctx)
        server = scoring_server()
        if ctx.role != "scorer" or server is None:
            return
        block = server.shared
        end = len(block)
        found = block[end - len(MARKER):end] == MARKER
        print(f"shm_carry: scorer started, marker {'inherited' if found else 'absent'}", flush=True)
        block[end - len(MARKER):end] = MARKER
