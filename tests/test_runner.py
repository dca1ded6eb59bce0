"""The harness-owned training loop, in-process: stream order, stopping rules, clock, failures."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from harness.budget import RunLimits, TrainClock
from harness.contract import Entry, Hparams
from harness.errors import EntryFailure, FailureKind
from harness.runner import TrainStream, TrainSummary, call_entry, train

EOS = 0


class Recorder:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)


class Logging(Entry):
    """Records every batch and hook call; optional sleep per step."""

    def __init__(self, sleep: float = 0.0, loss: float = 1.0) -> None:
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.events: list[str] = []
        self.sleep = sleep
        self.loss = loss

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        self.batches.append((inputs, targets))
        time.sleep(self.sleep)
        return self.loss

    def on_epoch_start(self, epoch: int) -> None:
        self.events.append(f"start{epoch}")

    def on_epoch_end(self, epoch: int) -> None:
        self.events.append(f"end{epoch}")

    def on_validation(self, valid_perplexity: float) -> None:
        self.events.append("valid")


def run(entry: Logging, ids: torch.Tensor, hp: Hparams, seconds: float = 60.0, evals: int = 0,
        validate: Any = None) -> TrainSummary:
    stream = TrainStream(ids, EOS, hp.batch_size, hp.seq_len, torch.device("cpu"))
    limits = RunLimits(seconds=seconds, memory_bytes=2**30, evals=evals)
    return train(entry, stream, hp, TrainClock(seconds), limits, Recorder(), validate or (lambda s: 1.0))


def test_stream_rows_are_contiguous_and_cover_every_target() -> None:
    ids = torch.arange(1, 102)  # 101 tokens
    stream = TrainStream(ids, EOS, batch_size=4, seq_len=7, device=torch.device("cpu"))
    batches = list(stream)
    inputs = torch.cat([b[0] for b in batches], dim=1)  # (4, 25)
    targets = torch.cat([b[1] for b in batches], dim=1)
    assert inputs.shape == (4, 25) and len(batches) == 4 and batches[-1][0].shape == (4, 4)
    assert inputs[0, 0] == EOS and inputs[0, 1] == 1  # the first word is a target of <eos>
    assert torch.equal(targets[:, :-1], inputs[:, 1:])  # targets are inputs shifted left
    assert torch.equal(inputs[1, 0:1], targets[0, -1:])  # row b+1 starts where row b ends
    assert sorted(targets.flatten().tolist()) == list(range(1, 101))  # all but N mod B = 1 targets
    assert all(b[0].is_contiguous() for b in batches)


def test_max_epochs_runs_whole_epochs_with_hooks_in_order() -> None:
    entry = Logging()
    summary = run(entry, torch.arange(1, 101), Hparams(batch_size=2, seq_len=10, max_epochs=2))
    assert summary.stop_reason == "max_epochs" and summary.epochs == 2.0
    assert summary.steps == 10 and summary.tokens == 2 * 50 * 2
    assert entry.events == ["start0", "end0", "start1", "end1"]
    assert torch.equal(entry.batches[0][0], entry.batches[5][0])  # every epoch replays the same order


def test_max_steps_stops_mid_epoch() -> None:
    summary = run(Logging(), torch.arange(1, 1001), Hparams(batch_size=2, seq_len=10, max_steps=7))
    assert summary.stop_reason == "max_steps" and summary.steps == 7
    assert 0 < summary.epochs < 1


def test_budget_stops_training_and_validation_is_not_timed() -> None:
    validated = []

    def slow_validation(summary: TrainSummary) -> float:
        time.sleep(0.3)  # untimed: must not eat into the budget
        validated.append(summary.steps)
        return 100.0

    entry = Logging(sleep=0.02)
    started = time.monotonic()
    summary = run(entry, torch.arange(1, 100_001), Hparams(batch_size=2, seq_len=10), seconds=0.5, evals=3,
                  validate=slow_validation)
    wall = time.monotonic() - started
    assert summary.stop_reason == "budget"
    assert 0.5 <= summary.train_seconds < 0.6
    assert len(validated) == 3 and entry.events.count("valid") == 3
    assert wall >= 0.5 + 3 * 0.3


def test_non_finite_loss_fails_the_run() -> None:
    with pytest.raises(EntryFailure, match="non-finite loss") as failure:
        run(Logging(loss=float("nan")), torch.arange(1, 101), Hparams(batch_size=2, seq_len=10))
    assert failure.value.kind is FailureKind.NON_FINITE


def test_loss_that_is_not_a_scalar_is_a_contract_violation() -> None:
    class VectorLoss(Logging):
        def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> Any:
            return torch.ones(3)

    with pytest.raises(EntryFailure) as failure:
        run(VectorLoss(), torch.arange(1, 101), Hparams(batch_size=2, seq_len=10))
    assert failure.value.kind is FailureKind.CONTRACT_VIOLATION


def test_entry_exceptions_become_runtime_failures_with_traceback() -> None:
    def broken() -> None:
        raise KeyError("missing")

    with pytest.raises(EntryFailure, match="setup raised KeyError") as failure:
        call_entry(FailureKind.RUNTIME_ERROR, "setup", broken)
    assert "broken" in failure.value.traceback
    with pytest.raises(EntryFailure, match="called sys.exit"):
        call_entry(FailureKind.RUNTIME_ERROR, "train_step", lambda: exit(3))


def test_batch_larger_than_the_split_is_reported() -> None:
    with pytest.raises(EntryFailure, match="batch_size 50 is larger"):
        TrainStream(torch.arange(1, 20), EOS, batch_size=50, seq_len=5, device=torch.device("cpu"))
