"""The training stream, cut by the supervisor and handed to the trainer one batch at a time.

The train split is one stream, `<eos>` in front, cut into B rows of equal length; each request
takes the next T columns (T = the entry's seq_len, or what its `next_seq_len()` asks for). Steps,
tokens and epochs are counted here, from what was handed out, never from what a trainer reports.
On the mlm track the supervisor also masks each batch (BERT's 80/10/10), from the run's seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from harness.mlm import mask_batch

MAX_BATCH_TOKENS = 1 << 21  # B * T per batch: 2 Mi tokens (16 MiB on the wire) is far beyond any real step


@dataclass
class Batch:
    inputs: np.ndarray   # (B, T) int32
    targets: np.ndarray  # (B, T) int32 (-100 where an mlm target is not scored)
    epoch: int
    epoch_start: bool


class TrainFeed:
    def __init__(self, train_ids: np.ndarray, eos_id: int, batch_size: int, seq_len: int,
                 max_steps: int | None, max_epochs: int | None, mask_id: int | None, vocab_size: int,
                 seed: int) -> None:
        stream = np.concatenate([[eos_id], train_ids]).astype(np.int32)
        n = (stream.size - 1) // batch_size
        if n < 1:
            raise ValueError(f"batch_size {batch_size} is larger than the train split ({train_ids.size} tokens)")
        rows = np.lib.stride_tricks.as_strided(stream, (batch_size, n + 1), (stream.strides[0] * n, stream.strides[0]))
        self.inputs = np.ascontiguousarray(rows[:, :-1])   # (B, n)
        self.targets = np.ascontiguousarray(rows[:, 1:])   # (B, n)
        self.batch_size, self.seq_len, self.row_length = batch_size, seq_len, n
        self.max_steps, self.max_epochs = max_steps, max_epochs
        self.mask_id, self.vocab_size = mask_id, vocab_size
        self.generator = torch.Generator().manual_seed(seed)
        self.column = 0
        self.epoch = 0
        self.steps = 0
        self.tokens = 0
        self.train_tokens = int(train_ids.size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.row_length / self.seq_len)

    @property
    def epochs(self) -> float:
        return self.epoch + self.column / self.row_length

    def finished(self) -> str:
        """Why no more batches may be handed out (`max_steps`, `max_epochs`), or ''."""
        if self.max_steps is not None and self.steps >= self.max_steps:
            return "max_steps"
        if self.max_epochs is not None and self.epoch >= self.max_epochs:
            return "max_epochs"
        return ""

    def at_epoch_end(self) -> bool:
        return self.column >= self.row_length

    def end_epoch(self) -> int:
        """Close the epoch that just ran out; returns its index."""
        ended = self.epoch
        self.epoch += 1
        self.column = 0
        return ended

    def next_batch(self, seq_len: int | None) -> Batch:
        length = seq_len or self.seq_len
        length = max(1, min(length, MAX_BATCH_TOKENS // self.batch_size))
        start, end = self.column, min(self.column + length, self.row_length)
        inputs, targets = self.inputs[:, start:end], self.targets[:, start:end]
        if self.mask_id is not None:
            masked, labels = mask_batch(torch.from_numpy(inputs.astype(np.int64)), self.generator, self.mask_id,
                                        self.vocab_size)
            inputs, targets = masked.numpy().astype(np.int32), labels.numpy().astype(np.int32)
        self.column = end
        self.steps += 1
        self.tokens += int(end - start) * self.batch_size
        return Batch(np.ascontiguousarray(inputs), np.ascontiguousarray(targets), self.epoch, start == 0)
