"""The training stream as the supervisor cuts it: contiguous rows, epochs, variable windows, counts."""

from __future__ import annotations

import numpy as np
import pytest

from harness.feed import TrainFeed
from harness.mlm import IGNORE

EOS = 0


def feed(n: int = 1_000, batch: int = 4, seq_len: int = 7, **kw: object) -> TrainFeed:
    ids = np.arange(1, n + 1, dtype=np.int32)
    return TrainFeed(ids, EOS, batch, seq_len, kw.get("max_steps"), kw.get("max_epochs"), kw.get("mask_id"),
                     10_000, 0)


def test_rows_continue_across_batches_and_cover_every_target() -> None:
    f = feed()
    seen = []
    while not f.at_epoch_end():
        batch = f.next_batch(None)
        assert (batch.targets[:, :-1] == batch.inputs[:, 1:]).all()  # targets are inputs shifted by one
        seen.append(batch)
    rows = np.concatenate([b.inputs for b in seen], axis=1)  # (B, n)
    assert rows[0, 0] == EOS  # the first word is predicted from <eos>
    assert (np.diff(rows[1:], axis=1) == 1).all()  # each row is one contiguous stretch of the stream
    targets = np.concatenate([b.targets for b in seen], axis=1)
    assert len(set(targets.ravel().tolist())) == targets.size  # no target twice
    assert f.steps == len(seen) == f.steps_per_epoch and f.tokens == targets.size
    assert seen[0].epoch_start and not seen[1].epoch_start


def test_variable_windows_continue_where_the_last_stopped() -> None:
    f = feed(seq_len=7)
    first, second = f.next_batch(3), f.next_batch(11)
    assert first.inputs.shape == (4, 3) and second.inputs.shape == (4, 11)
    assert (second.inputs[:, 0] == first.inputs[:, -1] + 1)[1:].all()
    assert f.tokens == 4 * 14 and f.steps == 2


def test_epochs_and_limits() -> None:
    f = feed(max_epochs=1)
    while not f.at_epoch_end():
        f.next_batch(None)
    assert f.finished() == "" and f.end_epoch() == 0 and f.finished() == "max_epochs" and f.epochs == 1.0
    g = feed(max_steps=2)
    g.next_batch(None), g.next_batch(None)
    assert g.finished() == "max_steps"


def test_mlm_batches_are_masked_by_the_supervisor() -> None:
    f = feed(n=20_000, batch=8, seq_len=64, mask_id=10_000)
    batch = f.next_batch(None)
    chosen = batch.targets != IGNORE
    assert 0.08 < chosen.mean() < 0.22
    assert (batch.inputs[chosen] == 10_000).mean() > 0.6


def test_a_batch_larger_than_the_split_is_refused() -> None:
    with pytest.raises(ValueError, match="larger than the train split"):
        feed(n=3, batch=10)
