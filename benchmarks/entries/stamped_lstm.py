"""lstm_small, writing the wall-clock time of its first and last train_step to a file."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import torch

from baselines.lstm_small import LstmSmall, ZarembaSmallHparams


@dataclass
class StampedHparams(ZarembaSmallHparams):
    stamp_file: str = "stamps.json"
    """Relative: lands in the run directory, the child's working directory."""


class StampedLstm(LstmSmall):
    name = "stamped_lstm"
    Hparams = StampedHparams

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        started = time.time()
        loss = super().train_step(inputs, targets)
        self.stamps = getattr(self, "stamps", {"first_step_start": started})
        self.stamps["last_step_end"] = time.time()
        with open(self.hparams.stamp_file, "w") as out:
            json.dump(self.stamps, out)
        return loss
