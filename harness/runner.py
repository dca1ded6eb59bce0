"""The training loop the harness owns. It runs inside the run's child process.

The entry never sees the loop: the harness feeds batches in a fixed order, keeps the clock,
pauses it for validation, stops at the budget, and scores with the checks in `harness.scoring`.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from harness.budget import RunLimits, TrainClock
from harness.contract import Entry, Hparams
from harness.errors import EntryFailure, FailureKind
from harness.mlm import MaskedScore, MaskedStream, score_masked
from harness.scoring import EvalProtocol, SplitScore, audit_causality, score_split


PROGRESS_EVERY_SECONDS = 0.25


class Reporter(Protocol):
    """Where the loop sends what it does (the worker forwards it to the supervisor)."""

    def send(self, message: dict[str, Any]) -> None: ...


def call_entry(kind: FailureKind, where: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call entry code; turn any exception it raises into an `EntryFailure` naming the call."""
    try:
        return function(*args, **kwargs)
    except EntryFailure:
        raise
    except SystemExit as exc:
        raise EntryFailure(kind, f"{where} called sys.exit({exc.code!r})", traceback.format_exc()) from exc
    except (torch.OutOfMemoryError, MemoryError) as exc:
        raise EntryFailure(FailureKind.OUT_OF_MEMORY, f"{where} ran out of memory: {exc}",
                           traceback.format_exc()) from exc
    except Exception as exc:
        if isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc):  # CPU allocator's OOM
            raise EntryFailure(FailureKind.OUT_OF_MEMORY, f"{where} ran out of memory: {exc}",
                               traceback.format_exc()) from exc
        raise EntryFailure(kind, f"{where} raised {type(exc).__name__}: {exc}", traceback.format_exc()) from exc


class TrainStream:
    """The train split as B contiguous rows, cut into (B, T) windows in a fixed order.

    stream = [<eos>] + train ids, length N + 1. Row b holds stream[b*n : b*n + n + 1] with
    n = N // B, so rows overlap by one token and every target but the last N mod B is trained on.
    """

    def __init__(self, ids: torch.Tensor, eos_id: int, batch_size: int, seq_len: int,
                 device: torch.device) -> None:
        stream = torch.cat([torch.tensor([eos_id]), ids])
        n = (stream.numel() - 1) // batch_size
        if n < 1:
            raise EntryFailure(FailureKind.CONTRACT_VIOLATION,
                               f"batch_size {batch_size} is larger than the train split ({ids.numel()} tokens)")
        rows = torch.as_strided(stream, (batch_size, n + 1), (n, 1))  # (B, n + 1)
        self.inputs = rows[:, :-1].contiguous().to(device)   # (B, n)
        self.targets = rows[:, 1:].contiguous().to(device)   # (B, n)
        self.seq_len = seq_len
        self.row_length = n

    def __len__(self) -> int:
        return math.ceil(self.row_length / self.seq_len)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.row_length, self.seq_len):
            end = start + self.seq_len
            yield self.inputs[:, start:end].contiguous(), self.targets[:, start:end].contiguous()


def training_stream(train_ids: torch.Tensor, eos_id: int, hparams: Hparams, device: torch.device,
                    mask_id: int | None, vocab_size: int, seed: int) -> TrainStream | MaskedStream:
    """The train stream a run of this track sees: plain, or BERT-masked (mask_id given)."""
    stream = TrainStream(train_ids, eos_id, hparams.batch_size, hparams.seq_len, device)
    if mask_id is None:
        return stream
    return MaskedStream(stream, mask_id, vocab_size, seed)


@dataclass
class TrainSummary:
    steps: int = 0
    epochs: float = 0.0
    tokens: int = 0
    train_seconds: float = 0.0
    stop_reason: str = ""
    last_loss: float | None = None


@dataclass
class Evaluator:
    """Scores splits of one run under the checks; shared by validation passes and final scoring."""

    entry: Entry
    eos_id: int
    vocab_size: int
    device: torch.device
    protocol: EvalProtocol
    seed: int
    track: str = "causal"
    mask_id: int | None = None

    def score(self, ids: torch.Tensor, split: str) -> SplitScore | MaskedScore:
        if self.track == "mlm":
            return call_entry(FailureKind.RUNTIME_ERROR, f"log_probs (scoring {split})", score_masked,
                              self.entry, ids, mask_id=self.mask_id, vocab_size=self.vocab_size,
                              device=self.device, normalisation_tol=self.protocol.normalisation_tol,
                              split=split, batch_size=self.protocol.batch_size)
        return call_entry(FailureKind.RUNTIME_ERROR, f"log_probs (scoring {split})", score_split,
                          self.entry, ids, split=split, **self._common())

    def audit(self, ids: torch.Tensor) -> bool:
        """Run the causality audit; False where it does not apply (the bidirectional mlm track)."""
        if self.track == "mlm":
            return False
        call_entry(FailureKind.RUNTIME_ERROR, "log_probs (causality audit)", audit_causality,
                   self.entry, ids, seed=self.seed, **self._common())
        return True

    def _common(self) -> dict[str, Any]:
        return {"eos_id": self.eos_id, "vocab_size": self.vocab_size, "device": self.device,
                "protocol": self.protocol}


def train(
    entry: Entry, stream: TrainStream | MaskedStream, hparams: Hparams, clock: TrainClock, limits: RunLimits,
    reporter: Reporter, validate: Callable[[TrainSummary], float],
) -> TrainSummary:
    """Call train_step on the stream until the budget, max_epochs or max_steps; validate on cadence.

    `validate` runs one untimed validation pass and returns its perplexity.
    """
    summary = TrainSummary()
    interval = limits.seconds / limits.evals if limits.evals else math.inf
    next_eval = interval
    epoch = 0
    clock.start()
    reported = -math.inf
    while not summary.stop_reason:
        if hparams.max_epochs is not None and epoch >= hparams.max_epochs:
            summary.stop_reason = "max_epochs"
            break
        call_entry(FailureKind.RUNTIME_ERROR, f"on_epoch_start({epoch})", entry.on_epoch_start, epoch)
        for index, (inputs, targets) in enumerate(stream):
            summary.stop_reason = _stop_reason(clock, hparams, summary.steps)
            if summary.stop_reason:
                summary.epochs = epoch + index / len(stream)
                break
            _step(entry, inputs, targets, summary)
            if clock.elapsed - reported >= PROGRESS_EVERY_SECONDS:  # a message per step would cost
                reported = clock.elapsed
                reporter.send({"type": "progress", "step": summary.steps, "epoch": epoch,
                               "train_seconds": reported, "tokens": summary.tokens, "loss": summary.last_loss})
            if clock.elapsed >= next_eval:
                summary.train_seconds = clock.elapsed
                with clock.paused():
                    valid_ppl = validate(summary)
                call_entry(FailureKind.RUNTIME_ERROR, "on_validation", entry.on_validation, valid_ppl)
                next_eval = (math.floor(clock.elapsed / interval) + 1) * interval
        else:
            call_entry(FailureKind.RUNTIME_ERROR, f"on_epoch_end({epoch})", entry.on_epoch_end, epoch)
            epoch += 1
            summary.epochs = float(epoch)
    summary.train_seconds = clock.elapsed
    return summary


def _stop_reason(clock: TrainClock, hparams: Hparams, steps: int) -> str:
    if clock.spent:
        return "budget"
    if hparams.max_steps is not None and steps >= hparams.max_steps:
        return "max_steps"
    return ""


def _step(entry: Entry, inputs: torch.Tensor, targets: torch.Tensor, summary: TrainSummary) -> None:
    loss = call_entry(FailureKind.RUNTIME_ERROR, f"train_step (step {summary.steps})",
                      entry.train_step, inputs, targets)
    try:
        value = float(loss)  # on CUDA this waits for the step, so the clock sees its real cost
    except (TypeError, ValueError, RuntimeError) as exc:
        raise EntryFailure(
            FailureKind.CONTRACT_VIOLATION,
            f"train_step must return the loss as a float or 0-dim tensor, got {type(loss).__name__}: {exc}",
        ) from exc
    if not math.isfinite(value):
        raise EntryFailure(FailureKind.NON_FINITE,
                           f"train_step returned a non-finite loss ({value}) at step {summary.steps}; "
                           "lower the learning rate or clip gradients")
    summary.steps += 1
    summary.tokens += targets.numel()
    summary.last_loss = value
