"""`harness check` and `--hparam` typing: participant code, run through the same sandbox as a run.

`check_entry` is a real run of the entry on a small synthetic corpus (no PTB data): both
sandboxed processes, a few steps, every hook, a validation pass from a checkpoint reloaded in the
fresh scorer, end of training, the real scoring layout with every audit, and scoring at other
batch sizes. `describe_entries` imports entries in a sandboxed process to read their
hyper-parameter schemas; nothing else about an entry is taken from it.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness.budget import RunLimits
from harness.entries import EntrySource, static_metadata
from harness.errors import FailureKind, RunStatus
from harness.execution import ChildLimits, RunData, RunEnd, RunResult, RunSpec, SandboxedChild, execute_run
from harness.protocol import ChildGone, ProtocolViolation, child_failure, validate
from harness.sandbox import Confinement, remove_tree
from harness.scoring import EvalProtocol, describe_audits

VOCAB_SIZE = 10_000
CHECK_STEPS = 4
DESCRIBE_MEMORY = 8 * 2**30


def synthetic_split(tokens: int, seed: int) -> np.ndarray:
    """(tokens,) random word ids with an `<eos>` (id 0) ending a sentence every 5 to 30 words."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB_SIZE, tokens).astype(np.int32)
    position = 0
    while position < tokens:
        position += int(rng.integers(5, 30))
        ids[min(position, tokens - 1)] = 0
    ids[-1] = 0
    return ids


def synthetic_data() -> RunData:
    vocab = ("<eos>",) + tuple(f"w{i}" for i in range(1, VOCAB_SIZE))
    return RunData(vocab, 0, synthetic_split(4_000, 1), synthetic_split(6_000, 2), synthetic_split(3_000, 3),
                   {"synthetic": "check"})


def check_entry(entry: EntrySource, overrides: dict[str, Any], device: str, confinement: Confinement,
                timeout: float) -> tuple[RunResult, list[dict[str, Any]]]:
    """Run the whole life cycle of `entry` briefly; the result and a list of findings to show."""
    spec = RunSpec(entry_name=entry.name, source=entry.source, source_hash=entry.source_hash,
                   track=static_metadata(entry)["track"], hparams=overrides, seed=0, device=device, threads=1,
                   limits=RunLimits(seconds=timeout, memory_bytes=8 * 2**30, evals=1), protocol=EvalProtocol(),
                   eval_at_steps=(1,), step_cap=CHECK_STEPS, batch_independence=(1, 2))
    work = Path(tempfile.mkdtemp(prefix="ptb-harness-check-"))
    try:
        result = execute_run(spec, synthetic_data(), confinement, work / "run")
    finally:
        remove_tree(work)
    return result, findings(result)


_STAGE_OF_FAILURE = {
    FailureKind.IMPORT_ERROR: "import", FailureKind.CONTRACT_VIOLATION: "contract", FailureKind.NON_FINITE: "training",
    FailureKind.INVALID_OUTPUT: "scoring", FailureKind.CAUSALITY_VIOLATION: "causality",
    FailureKind.WEIGHTS_MODIFIED: "replay (weights frozen while scoring)", FailureKind.TIMEOUT: "time",
    FailureKind.OUT_OF_MEMORY: "memory", FailureKind.SANDBOX_VIOLATION: "sandbox",
}
_SCORING_KINDS = {FailureKind.INVALID_OUTPUT, FailureKind.CAUSALITY_VIOLATION, FailureKind.WEIGHTS_MODIFIED}


def findings(result: RunResult) -> list[dict[str, Any]]:
    if not result.ok:
        found = []
        if result.steps:
            found.append({"check": "import, contract, hyper-parameters, setup", "ok": True, "detail": ""})
        if result.failure in _SCORING_KINDS:
            found.append({"check": "training", "ok": True, "detail": f"{result.steps} steps"})
        stage = _STAGE_OF_FAILURE.get(result.failure, "run") if result.failure else "run"
        found.append({"check": stage, "ok": False, "kind": result.failure.value if result.failure else "",
                      "detail": f"[{result.failure.value if result.failure else result.status.value}] {result.reason}",
                      "traceback": result.traceback or "", "log": result.log_tail})
        return found
    curve = ", ".join(f"{point['valid_ppl']:.1f}" for point in result.curve) or "none (training ended first)"
    return [
        {"check": "import, contract, hyper-parameters, setup (trainer and scorer)", "ok": True, "detail": ""},
        {"check": "training", "ok": True,
         "detail": f"{result.steps} steps, {result.tokens:,} tokens, stopped by {result.stop_reason}; hooks called: "
                   + ", ".join(f"{name} x{count}" for name, count in sorted(result.hooks.items()))},
        {"check": "validation pass from a checkpoint reloaded in the scorer", "ok": True,
         "detail": f"valid perplexity {curve}"},
        {"check": "scoring (rows checked by the supervisor: shape, finite, normalised)", "ok": True,
         "detail": f"valid {result.valid.perplexity:.2f}, test {result.test.perplexity:.2f}; "
                   f"C = {result.context}, W = {result.window}"},
        {"check": "causality and replay audits", "ok": True, "detail": describe_audits(result.audits)},
        {"check": "batch-size independence", "ok": True, "detail": "same perplexity with 1, 2 and 16 segments per batch"},
        {"check": "parameters", "ok": True, "detail": f"{result.param_count or 0:,} values in the checkpoint"},
    ]


def describe_entries(entries: list[EntrySource], confinement: Confinement, timeout: float = 120.0
                     ) -> dict[str, dict[str, Any]]:
    """name -> {"ok", "schema" | "kind", "reason"}: each entry imported in its own sandboxed process,
    so no entry's code can speak for another's."""
    return {entry.name: _describe_one(entry, confinement, timeout) for entry in entries}


def _describe_one(entry: EntrySource, confinement: Confinement, timeout: float) -> dict[str, Any]:
    """Import one entry in a sandboxed process and read its hyper-parameter schema."""
    work = Path(tempfile.mkdtemp(prefix="ptb-harness-describe-"))
    os.chmod(work, 0o755)
    source_dir, scratch = work / "entry", work / "scratch"
    source_dir.mkdir()
    scratch.mkdir()
    path = source_dir / f"{entry.name.replace('/', '_')}.py"
    path.write_text(entry.source, encoding="utf-8")
    os.chmod(path, 0o444)
    child = None
    try:
        child = SandboxedChild("describer", "describe", scratch, (source_dir,), (), {"type": "spec", "path": str(path)},
                               ChildLimits(DESCRIBE_MEMORY, 1, 0, 2**28), confinement, work / "describe.log")
        return _described(child, time.monotonic() + timeout)
    except (ProtocolViolation, ChildGone, OSError) as exc:  # it broke the describer's protocol: it fails alone
        return {"ok": False, "kind": FailureKind.CONTRACT_VIOLATION.value,
                "reason": f"reading its hyper-parameters failed: {exc}"}
    except RunEnd as end:  # the same limits as a run: memory, processes, output, disk
        return {"ok": False, "kind": end.failure.value, "reason": f"reading its hyper-parameters: {end.reason}"}
    finally:
        if child is not None:
            child.release()
        remove_tree(work)


def _described(child: SandboxedChild, deadline: float) -> dict[str, Any]:
    """The child's one `described` message, or why there is none (it hung, crashed or lied about its kind)."""
    while time.monotonic() < deadline and not child.channel.closed:
        child.poll(0.1)
        child.check_limits()
        if child.queue:
            message = validate(child.queue.popleft(), frozenset({"described"}))
            if message["type"] == "failure":
                kind, reason, _ = child_failure(message)
                return {"ok": False, "kind": kind.value, "reason": reason}
            return message
    return {"ok": False, "kind": FailureKind.IMPORT_ERROR.value,
            "reason": "could not be imported to read its hyper-parameters"}


__all__ = ["check_entry", "describe_entries", "findings", "RunStatus"]
