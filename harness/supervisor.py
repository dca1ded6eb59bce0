"""The driver's side of runs: decide what runs, hand each run to an executor, record the results.

A run itself is `harness.execution.execute_run` (sandboxed processes, clock, scoring, checks; no
database). This module claims runs in the store, starts them through an executor, and writes what
comes back. Names, tracks and authors are read from the entry's source here (never from a child),
and a submission that takes a reserved or duplicate name fails alone.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import harness
from harness.budget import RunLimits
from harness.data import Corpus
from harness.entries import EntrySource, static_metadata
from harness.errors import FailureKind, RunStatus
from harness.execution import RunData, RunResult, RunSpec, execute_run
from harness.provenance import cpu_model, hardware_fingerprint, harness_git_commit, run_key
from harness.sandbox import Confinement
from harness.scoring import EvalProtocol, MaskedScore, SplitScore
from harness.store import Store

EventSink = Callable[[dict[str, Any]], None]

# Which finished results a new `harness run` reuses instead of running again.
REUSE_DEFAULT = frozenset({RunStatus.OK.value, RunStatus.INVALID.value, RunStatus.FAILED.value,
                           RunStatus.TIMEOUT.value, RunStatus.OUT_OF_MEMORY.value})
REUSE_RETRY_FAILED = frozenset({RunStatus.OK.value, RunStatus.INVALID.value})
REUSE_NOTHING: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RunRequest:
    entry: EntrySource
    hparams: dict[str, Any]
    """Typed overrides of the entry's defaults."""
    seed: int
    device: str
    threads: int
    limits: RunLimits
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    division: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    disk_bytes: int = 2**30
    problem: str | None = None
    """Set when the entry may not run at all (a reserved or duplicate name): it fails alone."""

    def key(self, data_checksums: dict[str, str]) -> str:
        """Everything that determines the result; runs with equal keys are interchangeable."""
        return run_key(
            entry=self.entry.name, source_hash=self.entry.source_hash, hparams=self.hparams, seed=self.seed,
            budget=self.limits.seconds, memory=self.limits.memory_bytes, evals=self.limits.evals,
            device=self.device, hardware=hardware_fingerprint(self.device), data=data_checksums,
            protocol=asdict(self.protocol), harness=harness.__version__,
        )

    def spec(self) -> RunSpec:
        meta = static_metadata(self.entry)
        return RunSpec(entry_name=self.entry.name, source=self.entry.source, source_hash=self.entry.source_hash,
                       track=meta["track"], hparams=self.hparams, seed=self.seed, device=self.device,
                       threads=self.threads, limits=self.limits, protocol=self.protocol, disk_bytes=self.disk_bytes)

    def row_fields(self, data_checksums: dict[str, str]) -> dict[str, Any]:
        """The columns a run row starts with; name, authors and track from the parent's reading of the source."""
        meta = static_metadata(self.entry)
        return dict(
            entry=self.entry.name, entry_kind=self.entry.kind, entry_path=str(self.entry.path),
            source_hash=self.entry.source_hash, source=self.entry.source, hparams=self.hparams,
            hparam_overrides=self.hparams, seed=self.seed, device=self.device, threads=self.threads,
            budget_seconds=self.limits.seconds, memory_limit_bytes=self.limits.memory_bytes,
            eval_protocol=asdict(self.protocol), data_checksums=dict(data_checksums),
            harness_version=harness.__version__, git_commit=harness_git_commit(), division=self.division,
            hardware=hardware_fingerprint(self.device), config=self.config, display_name=meta["name"],
            authors=meta["authors"], description=meta["description"], track=meta["track"],
        )


@dataclass
class RunOutcome:
    run_id: int
    entry: str
    status: RunStatus
    failure: str | None = None
    reason: str | None = None
    valid_ppl: float | None = None
    valid_tokens: int | None = None
    test_ppl: float | None = None
    test_tokens: int | None = None
    train_seconds: float | None = None
    steps: int | None = None
    peak_memory_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}


class Supervisor:
    """Runs requests one after another, each through `execute_run`, recording each in the store."""

    def __init__(self, store: Store, corpus: Corpus, runs_dir: Path, on_event: EventSink | None = None,
                 confinement: Confinement = Confinement()) -> None:
        self.store = store
        self.corpus = corpus
        self.data = RunData.from_corpus(corpus)
        self.runs_dir = runs_dir.resolve()
        self.confinement = confinement
        self.on_event = on_event or (lambda event: None)

    def close(self) -> None:
        return None

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_or_reuse(self, request: RunRequest, reuse: frozenset[str]) -> RunOutcome | None:
        """Reuse a finished result of the same key, leave one running elsewhere, or run it.

        Returns None when another live harness process is running this key right now.
        """
        checksums = dict(self.corpus.checksums)
        action, found = self.store.claim_run(request.key(checksums), reuse, **request.row_fields(checksums))
        if action == "reuse":
            outcome = outcome_of(found)
            self.on_event({"type": "run_reused", **outcome.as_dict(), "seed": request.seed})
            return outcome
        if action == "busy":
            self.on_event({"type": "run_busy", "run_id": found.id, "entry": request.entry.name,
                           "pid": found.runner_pid, "seed": request.seed})
            return None
        return self.run(request, found)

    def run(self, request: RunRequest, run_id: int | None = None) -> RunOutcome:
        """Run one request to its end; `run_id` is a row already claimed for it (else one is made)."""
        checksums = dict(self.corpus.checksums)
        if run_id is None:
            run_id = self.store.start_run(run_key=request.key(checksums), **request.row_fields(checksums))
        self.on_event({"type": "run_started", "run_id": run_id, "entry": request.entry.name,
                       "budget": request.limits.seconds})
        if request.problem:
            return self.record(run_id, request, RunResult(RunStatus.FAILED, FailureKind.CONTRACT_VIOLATION,
                                                          request.problem))
        events = _LiveEvents(self, run_id, request)
        try:
            result = execute_run(request.spec(), self.data, self.confinement, self.runs_dir / str(run_id),
                                 events)
        except BaseException:  # Ctrl-C or the supervisor failing: never leave the run `running`
            self.store.finish_run(run_id, RunStatus.INTERRUPTED, failure=FailureKind.INTERRUPTED.value,
                                  reason="the harness was interrupted while this run was in progress",
                                  **events.partial())
            raise
        return self.record(run_id, request, result)

    def record(self, run_id: int, request: RunRequest, result: RunResult) -> RunOutcome:
        fields = result_fields(result, request.device)
        if result.ok:
            self._save_token_nll(run_id, result)
        self.store.finish_run(run_id, result.status, **fields)
        outcome = RunOutcome(
            run_id=run_id, entry=request.entry.name, status=result.status, failure=fields["failure"],
            reason=result.reason, valid_ppl=fields.get("valid_ppl"), valid_tokens=fields.get("valid_tokens"),
            test_ppl=fields.get("test_ppl"), test_tokens=fields.get("test_tokens"),
            train_seconds=result.train_seconds, steps=result.steps, peak_memory_bytes=fields["peak_memory_bytes"],
        )
        self.on_event({"type": "run_finished", **outcome.as_dict()})
        return outcome

    def _save_token_nll(self, run_id: int, result: RunResult) -> None:
        folder = self.runs_dir / str(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        for score in (result.valid, result.test):
            if isinstance(score, SplitScore):
                np.save(folder / f"{score.split}_token_nll.npy", score.token_nll.astype(np.float32))


class _LiveEvents:
    """Forwards a run's events to the user and keeps the curve in the store as it grows."""

    def __init__(self, supervisor: Supervisor, run_id: int, request: RunRequest) -> None:
        self.supervisor, self.run_id, self.request = supervisor, run_id, request
        self.last: dict[str, Any] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        if event["type"] == "curve":
            point = {k: event[k] for k in ("train_seconds", "steps", "tokens", "valid_ppl")}
            self.supervisor.store.add_curve_point(self.run_id, **point)
        if event["type"] == "environment":  # the trainer is up: shown while the run is in flight
            self.supervisor.store.update_run(self.run_id, environment=event["environment"])
            return
        if event["type"] in ("progress", "curve"):
            self.last = event
        self.supervisor.on_event({**event, "run_id": self.run_id, "entry": self.request.entry.name})

    def partial(self) -> dict[str, Any]:
        """What an interrupted run keeps: its steps, tokens and time so far."""
        return {"steps": self.last.get("step", self.last.get("steps")), "tokens_trained": self.last.get("tokens"),
                "train_seconds": self.last.get("train_seconds")}


def result_fields(result: RunResult, device: str = "cpu") -> dict[str, Any]:
    """The store's columns for a finished run."""
    fields: dict[str, Any] = {
        "failure": result.failure.value if result.failure else None, "reason": result.reason,
        "traceback": result.traceback, "log_tail": result.log_tail,
        "peak_memory_bytes": result.peak_memory_bytes or None, "isolation": result.isolation,
        "steps": result.steps, "epochs": result.epochs, "tokens_trained": result.tokens,
        "train_seconds": result.train_seconds, "stop_reason": result.stop_reason or None,
        "param_count": result.param_count, "checks": {**result.checks, "audits": result.audits},
        "audits": result.audits or None, "cpu_seconds": result.cpu_seconds, "max_threads": result.max_threads or None,
        "train_seconds_paused_counted": result.paused_counted, "node": socket.gethostname(),
    }
    if result.hparams:
        fields["hparams"] = result.hparams
    env = result.environment
    if env:
        # The CPU's name as the supervisor reads it; a GPU's as the trainer reported it.
        fields.update(device_name=cpu_model() if device == "cpu" else _text(env.get("device_name")), torch_version=_text(env.get("torch_version")),
                      python_version=_text(env.get("python_version")), platform=_text(env.get("platform")),
                      environment={**env, "harness_version": harness.__version__})
    if result.ok:
        for split, score, sentences in (("valid", result.valid, result.valid_sentence_nll),
                                        ("test", result.test, result.test_sentence_nll)):
            fields[f"{split}_ppl"] = score.perplexity
            fields[f"{split}_tokens"] = score.tokens
            fields[f"{split}_nll_sum"] = score.nll_sum
            if isinstance(score, MaskedScore):
                fields[f"{split}_accuracy"] = score.accuracy
            if sentences is not None:
                fields[f"{split}_sentence_nll"] = np.asarray(sentences, dtype="<f4").tobytes()
    return fields


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def outcome_of(run: Any) -> RunOutcome:
    """The outcome recorded in a stored run (for a reused result)."""
    return RunOutcome(
        run_id=run.id, entry=run.entry, status=RunStatus(run.status), failure=run.failure, reason=run.reason,
        valid_ppl=run.valid_ppl, valid_tokens=run.valid_tokens, test_ppl=run.test_ppl, test_tokens=run.test_tokens,
        train_seconds=run.train_seconds, steps=run.steps, peak_memory_bytes=run.peak_memory_bytes,
    )
