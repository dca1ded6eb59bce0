"""`harness check`: every contract check on a tiny synthetic corpus, in seconds, without training.

Runs in a child process (see `harness.worker`). It reports every problem it can find rather
than stopping at the first, except where a later check needs an earlier one to have worked.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from harness.contract import Budget, Entry, SetupContext
from harness.entries import build_hparams, check_entry_class, import_entry_class
from harness.errors import EntryFailure, FailureKind, HarnessError
from harness.mlm import MaskedStream
from harness.runner import Evaluator, TrainStream, call_entry, training_stream
from harness.scoring import EvalProtocol, parameter_count, scoring_mode

VOCAB_SIZE = 10_000
EOS_ID = 0
CHECK_STEPS = 2
# A small protocol so that the checks cross segment and window boundaries on a tiny split.
CHECK_PROTOCOL = EvalProtocol(segment_tokens=96, batch_size=3, window=16, causality_windows=3)


def synthetic_split(tokens: int, seed: int) -> torch.Tensor:
    """(tokens,) random word ids with an `<eos>` ending a sentence every 5 to 30 words."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB_SIZE, (tokens,), generator=generator)
    position = 0
    while position < tokens:
        position += int(torch.randint(5, 30, (1,), generator=generator))
        ids[min(position, tokens - 1)] = EOS_ID
    ids[-1] = EOS_ID
    return ids


def run_checks(path: Path, overrides: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    findings: list[dict[str, Any]] = []

    def record(check: str, action: Any) -> Any:
        try:
            result = action()
        except (EntryFailure, HarnessError) as exc:
            kind = exc.kind.value if isinstance(exc, EntryFailure) else FailureKind.CONTRACT_VIOLATION.value
            findings.append({"check": check, "ok": False, "kind": kind, "detail": str(exc),
                             "traceback": getattr(exc, "traceback", "")})
            return None
        findings.append({"check": check, "ok": True, "detail": result if isinstance(result, str) else ""})
        return result if result is not None else True

    cls = record("import", lambda: call_entry(FailureKind.IMPORT_ERROR, f"importing {path.name}",
                                               import_entry_class, path))
    if cls is None:
        return findings
    record("contract", lambda: _contract(cls, path))
    hparams = record("hparams", lambda: build_hparams(cls.Hparams, overrides))
    if hparams is None:
        return findings
    entry = record("construct", lambda: call_entry(FailureKind.RUNTIME_ERROR, f"{cls.__name__}()", cls))
    if entry is None:
        return findings
    entry.hparams = hparams
    train_ids = synthetic_split(max(2_000, hparams.batch_size * (hparams.seq_len * CHECK_STEPS + 1)), seed=1)
    mask_id = VOCAB_SIZE if cls.track == "mlm" else None
    stream = training_stream(train_ids, EOS_ID, hparams, device, mask_id, VOCAB_SIZE, seed=0)
    ctx = SetupContext(
        vocab_size=VOCAB_SIZE, vocab=("<eos>",) + tuple(f"w{i}" for i in range(1, VOCAB_SIZE)),
        eos_id=EOS_ID, device=device, seed=0, budget=Budget(seconds=60.0, memory_bytes=8 * 2**30),
        hparams=hparams, steps_per_epoch=len(stream), train_tokens=int(train_ids.numel()), mask_id=mask_id,
    )
    if record("setup", lambda: call_entry(FailureKind.RUNTIME_ERROR, "setup", entry.setup, ctx)) is None:
        return findings
    record("train_step", lambda: _train_steps(entry, stream))
    _scoring_checks(Evaluator(entry, EOS_ID, VOCAB_SIZE, device, CHECK_PROTOCOL, 0, cls.track, mask_id), record)
    return findings


def _contract(cls: type[Entry], path: Path) -> str:
    problems = check_entry_class(cls, path)
    if problems:
        raise EntryFailure(FailureKind.CONTRACT_VIOLATION, "; ".join(problems))
    return f"{cls.__name__}: setup, train_step and log_probs defined"


def _train_steps(entry: Entry, stream: TrainStream | MaskedStream) -> str:
    losses = []
    for step, (inputs, targets) in zip(range(CHECK_STEPS), stream):
        loss = call_entry(FailureKind.RUNTIME_ERROR, f"train_step (step {step})", entry.train_step, inputs, targets)
        try:
            value = float(loss)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise EntryFailure(FailureKind.CONTRACT_VIOLATION,
                               f"train_step must return a float or 0-dim tensor loss, got {type(loss).__name__}") from exc
        if not math.isfinite(value):
            raise EntryFailure(FailureKind.NON_FINITE, f"train_step returned a non-finite loss ({value})")
        losses.append(value)
    return "losses " + ", ".join(f"{v:.3f}" for v in losses)


def _scoring_checks(evaluator: Evaluator, record: Any) -> None:
    entry = evaluator.entry
    split = synthetic_split(600, seed=2)

    def score(batch_size: int) -> float:
        evaluator.protocol = dataclasses.replace(CHECK_PROTOCOL, batch_size=batch_size)
        with scoring_mode(entry):
            return evaluator.score(split, "check").perplexity

    ppl = record("scoring (shape, finite, normalised, weights frozen)", lambda: f"perplexity {score(3):.2f}")
    if ppl is None:
        return

    def causality() -> str:
        with scoring_mode(entry):
            audited = evaluator.audit(split)
        return f"{CHECK_PROTOCOL.causality_windows} random windows" if audited else "not applicable (mlm track)"

    record("causality", causality)

    def batch_independence() -> str:
        one, many = score(1), score(7)
        if not math.isclose(one, many, rel_tol=1e-4):
            raise EntryFailure(FailureKind.INVALID_OUTPUT,
                               f"perplexity depends on the scoring batch size ({one:.4f} with 1 segment "
                               f"per batch, {many:.4f} with 7): rows of a batch must not influence each other")
        return f"{one:.4f} with 1 segment per batch, {many:.4f} with 7"

    record("batch-size independence", batch_independence)
    record("parameters", lambda: f"{parameter_count(entry):,} parameters")
