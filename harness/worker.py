"""The child-process side of a run: `python -m harness.worker MODE SPEC_JSON CHANNEL_FD`.

Modes:
- `run`: import the entry, train it under the clock, score valid, audit, then ask the supervisor
  for the test split (it is not in this process before training has stopped) and score it.
- `check`: the same checks on a tiny synthetic corpus, a couple of steps, no real data.
- `describe`: import entries and report their metadata and hyper-parameter schema.

Everything goes back to the supervisor as JSON messages over the channel; the child's own stdout
and stderr are the entry's log.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import random
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

import harness
from harness.budget import RunLimits, TrainClock
from harness.channel import Channel
from harness.contract import Budget, Entry, SetupContext
from harness.entries import (
    build_hparams, check_entry_class, entry_metadata, hparam_schema, import_entry_class,
)
from harness.errors import EntryFailure, FailureKind, HarnessError
from harness.mlm import MaskedScore
from harness.provenance import cpu_model
from harness.runner import Evaluator, TrainSummary, call_entry, train, training_stream
from harness.scoring import EvalProtocol, SplitScore, parameter_count, scoring_mode


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the supervisor dies (even by kill -9)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    # Outside a sandbox, a parent of 1 means the supervisor was gone before the request took effect.
    # Inside bwrap's pid namespace the parent is bwrap's reaper, pid 1, which dies with the supervisor.
    if os.getppid() == 1 and os.environ.get("HARNESS_SANDBOX") != "bwrap":
        os._exit(1)


def main(argv: list[str]) -> int:
    mode, spec_path, fd = argv
    die_with_parent()
    channel = Channel.from_fd(int(fd))
    spec = _read_spec(Path(spec_path))
    handlers = {"run": run_mode, "check": check_mode, "describe": describe_mode}
    try:
        handlers[mode](spec, channel)
    except EntryFailure as failure:
        channel.send({"type": "failure", "kind": failure.kind.value, "reason": failure.reason,
                      "traceback": failure.traceback or traceback.format_exc()})
        return 1
    except HarnessError as exc:  # raised by the harness about the entry (e.g. its Hparams)
        channel.send({"type": "failure", "kind": FailureKind.CONTRACT_VIOLATION.value,
                      "reason": str(exc), "traceback": traceback.format_exc()})
        return 1
    except BaseException as exc:  # a harness bug, or the entry breaking the harness itself
        channel.send({"type": "failure", "kind": FailureKind.HARNESS_ERROR.value,
                      "reason": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        return 1
    return 0


def _read_spec(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text())


def configure_process(seed: int, threads: int) -> None:
    """Same seed and thread count for every run, so results are reproducible."""
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "type": "environment",
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_model(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "environment": {
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version() if cuda else None,
            "gpu_driver": gpu_driver() if cuda else None,
            "harness_version": harness.__version__,
            "numpy_version": np.__version__,
            "machine": platform.machine(),
        },
    }


def gpu_driver() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def import_checked(path: Path) -> type[Entry]:
    cls = call_entry(FailureKind.IMPORT_ERROR, f"importing {path.name}", import_entry_class, path)
    problems = check_entry_class(cls, path)
    if problems:
        raise EntryFailure(FailureKind.CONTRACT_VIOLATION, "; ".join(problems))
    return cls


def run_mode(spec: dict[str, Any], channel: Channel) -> None:
    device = torch.device(spec["device"])
    configure_process(spec["seed"], spec["threads"])
    limits = RunLimits(**spec["limits"])
    protocol = EvalProtocol(**spec["protocol"])
    with np.load(spec["data_path"], allow_pickle=False) as data:
        vocab = tuple(str(word) for word in data["vocab"])
        train_ids = torch.from_numpy(data["train"].astype(np.int64))
        valid_ids = torch.from_numpy(data["valid"].astype(np.int64))
    eos_id = vocab.index("<eos>")
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(
            min(1.0, limits.memory_bytes / torch.cuda.get_device_properties(device).total_memory), device)
    channel.send(environment(device, spec["threads"]))

    clock = TrainClock(limits.seconds, synchronize=device.type == "cuda")
    channel.send({"type": "phase", "phase": "training"})  # the supervisor's clock starts here too
    path = Path(spec["entry_path"])
    clock.start()  # importing the entry, building it and `setup` are timed too
    cls = import_checked(path)
    hparams = build_hparams(cls.Hparams, spec["hparams"])
    entry = call_entry(FailureKind.RUNTIME_ERROR, f"{cls.__name__}()", cls)
    entry.hparams = hparams
    channel.send({"type": "described", **entry_metadata(cls, path), "hparams": dataclasses.asdict(hparams)})
    mask_id = len(vocab) if cls.track == "mlm" else None
    stream = training_stream(train_ids, eos_id, hparams, device, mask_id, len(vocab), spec["seed"])
    ctx = SetupContext(
        vocab_size=len(vocab), vocab=vocab, eos_id=eos_id, device=device, seed=spec["seed"],
        budget=Budget(seconds=limits.seconds, memory_bytes=limits.memory_bytes), hparams=hparams,
        steps_per_epoch=len(stream), train_tokens=int(train_ids.numel()), mask_id=mask_id,
    )
    call_entry(FailureKind.RUNTIME_ERROR, "setup", entry.setup, ctx)
    evaluator = Evaluator(entry, eos_id, len(vocab), device, protocol, spec["seed"], cls.track, mask_id)

    def validate(summary: TrainSummary) -> float:
        channel.send({"type": "phase", "phase": "eval"})
        with scoring_mode(entry):
            score = evaluator.score(valid_ids, "valid")
        channel.send({"type": "curve", "train_seconds": summary.train_seconds, "steps": summary.steps,
                      "tokens": summary.tokens, "valid_ppl": score.perplexity})
        channel.send({"type": "phase", "phase": "training"})
        return score.perplexity

    summary = train(entry, stream, hparams, clock, limits, channel, validate)
    channel.send({"type": "training_done", **dataclasses.asdict(summary), "param_count": parameter_count(entry)})
    with scoring_mode(entry):
        valid = evaluator.score(valid_ids, "valid")
        audited = evaluator.audit(valid_ids)
        test_ids = _receive_test_split(channel)
        test = evaluator.score(test_ids, "test")
    for score in (valid, test):
        if isinstance(score, SplitScore):
            np.save(Path(spec["run_dir"]) / f"{score.split}_token_nll.npy", score.token_nll.astype(np.float32))
    channel.send({
        "type": "result", "valid": _score_message(valid, valid_ids, eos_id),
        "test": _score_message(test, test_ids, eos_id),
        "param_count": parameter_count(entry),
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "checks": {"shape_finite_normalised": "passed", "causality": "passed" if audited else "not applicable",
                   "weights_frozen": "passed", "inference_mode": "enforced", "tokens_scored_once": "passed"},
    })


def _receive_test_split(channel: Channel) -> torch.Tensor:
    """The test ids arrive only now, after the training clock has stopped."""
    channel.send({"type": "need_test"})
    while True:
        for message in channel.receive(timeout=None):
            if message["type"] == "test":
                return torch.from_numpy(np.load(message["path"], allow_pickle=False).astype(np.int64))


def _score_message(score: SplitScore | MaskedScore, ids: torch.Tensor, eos_id: int) -> dict[str, Any]:
    message: dict[str, Any] = {"ppl": score.perplexity, "tokens": score.tokens, "nll_sum": score.nll_sum}
    if isinstance(score, MaskedScore):
        message["accuracy"] = score.accuracy
    else:
        message["sentence_nll"] = sentence_nll(score.token_nll, ids, eos_id).tolist()
    return message


def sentence_nll(token_nll: np.ndarray, ids: torch.Tensor, eos_id: int) -> np.ndarray:
    """(S,) NLL summed over each sentence (its words and its <eos>), in split order."""
    ends = np.flatnonzero(ids.numpy() == eos_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return np.add.reduceat(token_nll, starts)


def check_mode(spec: dict[str, Any], channel: Channel) -> None:
    from harness.check import run_checks

    configure_process(spec["seed"], spec["threads"])
    findings = run_checks(Path(spec["entry_path"]), spec["hparams"], torch.device(spec["device"]))
    channel.send({"type": "checked", "findings": findings})


def describe_mode(spec: dict[str, Any], channel: Channel) -> None:
    descriptions = []
    for raw_path in spec["paths"]:
        path = Path(raw_path)
        try:
            cls = import_checked(path)
            schema = hparam_schema(cls.Hparams)
            descriptions.append({"path": raw_path, "ok": True, **entry_metadata(cls, path), "schema": schema})
        except EntryFailure as failure:
            descriptions.append({"path": raw_path, "ok": False, "kind": failure.kind.value,
                                 "reason": failure.reason, "traceback": failure.traceback})
    channel.send({"type": "described_all", "entries": descriptions})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
