"""The driver's side of runs: decide what runs, hand each run to an executor, record the results.

A run itself is `harness.execution.execute_run` (sandboxed processes, clock, scoring, checks; no
database). This module claims runs in the store, starts them through an executor, and writes what
comes back. Names, tracks and authors are read from the entry's source here (never from a child),
and a submission that takes a reserved or duplicate name fails alone.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

import harness
from harness.budget import RunLimits
from harness.data import Corpus
from harness.entries import EntrySource, static_metadata
from harness.errors import FailureKind, LeaseLost, RunStatus
from harness.execution import RunData, RunResult, RunSpec
from harness.executors import Executor, Finished, Job, LocalExecutor
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
    hardware: str | None = None
    """The hardware class in the key (a division's declared one); None: this machine's CPU or GPU."""

    def hardware_class(self) -> str:
        return self.hardware or hardware_fingerprint(self.device, self.threads)

    def key(self, data_checksums: dict[str, str]) -> str:
        """Everything that determines the result; runs with equal keys are interchangeable."""
        return run_key(
            entry=self.entry.name, source_hash=self.entry.source_hash, hparams=self.hparams, seed=self.seed,
            budget=self.limits.seconds, memory=self.limits.memory_bytes, evals=self.limits.evals,
            device=self.device, hardware=self.hardware_class(), data=data_checksums,
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
            hardware=self.hardware_class(), config=self.config, display_name=meta["name"],
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
    """Claims runs in the store, hands them to an executor, records what comes back.

    The executor (default: `LocalExecutor`, one run after another in this process) only places
    `execute_run` calls; this driver alone claims runs and writes the database. It keeps as many
    runs claimed and out as the executor can hold at once, so several drivers on one database share
    the work: each claims the next runs only when it can start them.
    """

    def __init__(self, store: Store, corpus: Corpus, runs_dir: Path, on_event: EventSink | None = None,
                 confinement: Confinement = Confinement(), executor: Executor | None = None) -> None:
        self.store = store
        self.corpus = corpus
        self.data = RunData.from_corpus(corpus)
        self.runs_dir = runs_dir.resolve()
        self.confinement = confinement
        self.on_event = on_event or (lambda event: None)
        self.executor = executor or LocalExecutor(confinement, self.runs_dir)
        self.executor.start(self.data)

    def close(self) -> None:
        self.executor.close()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_or_reuse(self, request: RunRequest, reuse: frozenset[str]) -> RunOutcome | None:
        """Reuse a finished result of the same key, leave one running elsewhere, or run it.

        Returns None when another live harness process is running this key right now.
        """
        outcomes = self.run_all([request], reuse)
        return outcomes[0] if outcomes else None

    def run(self, request: RunRequest, run_id: int | None = None) -> RunOutcome:
        """Run one request to its end; `run_id` is a row already claimed for it (else one is made)."""
        if run_id is None:
            run_id = self.store.start_run(run_key=request.key(dict(self.corpus.checksums)),
                                          **request.row_fields(dict(self.corpus.checksums)))
        return _Dispatch(self, [], frozenset()).run_claimed(request, run_id)

    def run_all(self, requests: Iterable[RunRequest], reuse: frozenset[str]) -> list[RunOutcome]:
        """Every request reused, left to another driver, or run through the executor; outcomes in
        the order runs ended (reused ones when claimed). Ctrl-C records every run out `interrupted`."""
        return _Dispatch(self, list(requests), reuse).drive()

    def record(self, run_id: int, request: RunRequest, result: RunResult, node: str | None = None,
               node_environment: dict[str, Any] | None = None) -> RunOutcome:
        fields = result_fields(result, request.device)
        if node is not None:
            fields["node"] = node
        if node_environment:  # where a placed run actually ran, beside the hardware class in its key
            fields["environment"] = {**fields.get("environment", {}), **node_environment}
            if request.device == "cpu" and node_environment.get("node_cpu"):
                fields["device_name"] = node_environment["node_cpu"]  # the node's CPU, not the driver's
        try:
            self._store_result(run_id, result, fields)
        except LeaseLost as exc:  # another driver took the run over: its row stands, this result is dropped
            result = RunResult(RunStatus.INTERRUPTED, FailureKind.INTERRUPTED, str(exc))
            fields = {"failure": FailureKind.INTERRUPTED.value, "reason": result.reason, "peak_memory_bytes": None}
        except (SQLAlchemyError, OverflowError, ValueError) as exc:  # a value the database refuses: this
            # run fails as the harness's fault, recorded with why; the runs after it go on
            result = RunResult(RunStatus.FAILED, FailureKind.HARNESS_ERROR,
                               f"the harness could not store this run's result: {type(exc).__name__}: {exc}"[:2000])
            fields = {"failure": FailureKind.HARNESS_ERROR.value, "reason": result.reason, "peak_memory_bytes": None}
            self.finish_held(run_id, result.status, failure=fields["failure"], reason=result.reason)
        outcome = RunOutcome(
            run_id=run_id, entry=request.entry.name, status=result.status, failure=fields["failure"],
            reason=result.reason, valid_ppl=fields.get("valid_ppl"), valid_tokens=fields.get("valid_tokens"),
            test_ppl=fields.get("test_ppl"), test_tokens=fields.get("test_tokens"),
            train_seconds=result.train_seconds, steps=result.steps, peak_memory_bytes=fields["peak_memory_bytes"],
        )
        self.on_event({"type": "run_finished", **outcome.as_dict()})
        return outcome

    def _store_result(self, run_id: int, result: RunResult, fields: dict[str, Any]) -> None:
        """The per-token NLL files, then the row; the files only while the run is still this
        driver's (a lost claim writes nothing), and removed again if the row refuses the result."""
        if result.ok:
            self.store.renew_held(run_id)  # LeaseLost: a run taken over leaves no files either
            self._save_token_nll(run_id, result)
        try:
            self.store.finish_run(run_id, result.status, **fields)
        except LeaseLost:  # certainly not this driver's row: its files go too. On any other error
            self._drop_token_nll(run_id)  # the write may have committed (Ctrl-C after it), so they stay
            raise

    def finish_held(self, run_id: int, status: RunStatus, **fields: Any) -> None:
        """Finish a run unless another driver has taken it over (then its row stands as it is)."""
        try:
            self.store.finish_run(run_id, status, **fields)
        except LeaseLost as exc:
            self.on_event({"type": "lease_lost", "run_id": run_id, "reason": str(exc)})

    def _drop_token_nll(self, run_id: int) -> None:
        for split in ("valid", "test"):
            (self.runs_dir / str(run_id) / f"{split}_token_nll.npy").unlink(missing_ok=True)

    def _save_token_nll(self, run_id: int, result: RunResult) -> None:
        folder = self.runs_dir / str(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        for score in (result.valid, result.test):
            if isinstance(score, SplitScore):
                np.save(folder / f"{score.split}_token_nll.npy", score.token_nll.astype(np.float32))


class _Dispatch:
    """One `run_all`: claims up to the executor's capacity, records runs as they end, retries a run
    whose node died once, and on any exception (Ctrl-C) records every run still out `interrupted`."""

    def __init__(self, supervisor: Supervisor, requests: list[RunRequest], reuse: frozenset[str]) -> None:
        self.supervisor, self.store, self.executor = supervisor, supervisor.store, supervisor.executor
        self.pending: deque[tuple[RunRequest, int]] = deque((request, 1) for request in requests)
        self.reuse = reuse
        self.checksums = dict(supervisor.corpus.checksums)
        self.out: dict[int, tuple[RunRequest, _LiveEvents]] = {}
        self.outcomes: list[RunOutcome] = []

    def drive(self) -> list[RunOutcome]:
        try:
            while self.pending or self.out:
                self._fill()
                if self.out:
                    self._finish(self.executor.next_finished())
        except BaseException:
            self._interrupt_all()
            raise
        return self.outcomes

    def run_claimed(self, request: RunRequest, run_id: int) -> RunOutcome:
        try:
            self._start(request, run_id, 1)
            if self.out:
                self._finish(self.executor.next_finished())
        except BaseException:
            self._interrupt_all()
            raise
        return self.outcomes[-1]

    def _capacity(self, request: RunRequest) -> int:
        return self.executor.capacity(request.division or request.device, request.device, request.threads)

    def _fill(self) -> None:
        """Claim and submit runs while the executor has room for them."""
        while self.pending and len(self.out) < self._capacity(self.pending[0][0]):
            request, attempt = self.pending.popleft()
            action, found = self.store.claim_run(request.key(self.checksums), self.reuse,
                                                 **request.row_fields(self.checksums))
            if action == "reuse":
                outcome = outcome_of(found)
                self.supervisor.on_event({"type": "run_reused", **outcome.as_dict(), "seed": request.seed})
                self.outcomes.append(outcome)
            elif action == "busy":
                self.supervisor.on_event({"type": "run_busy", "run_id": found.id, "entry": request.entry.name,
                                          "pid": found.runner_pid, "holder": getattr(found, "lease_holder", None),
                                          "seed": request.seed})
            else:
                self._start(request, found, attempt)

    def _start(self, request: RunRequest, run_id: int, attempt: int) -> None:
        self.supervisor.on_event({"type": "run_started", "run_id": run_id, "entry": request.entry.name,
                                  "budget": request.limits.seconds, "executor": self.executor.name,
                                  "attempt": attempt})
        if request.problem:
            self.outcomes.append(self.supervisor.record(
                run_id, request, RunResult(RunStatus.FAILED, FailureKind.CONTRACT_VIOLATION, request.problem)))
            return
        events = _LiveEvents(self.supervisor, run_id, request)
        self.out[run_id] = (request, events)
        self.executor.submit(Job(run_id, request.spec(), request.division or request.device, events, attempt))

    def _finish(self, done: Finished) -> None:
        request, events = self.out.pop(done.job.run_id)
        result = done.result
        retry = done.node_lost and done.job.attempt == 1
        if done.node_lost:
            result.steps = result.steps or events.partial()["steps"] or 0
            if retry:
                self.pending.appendleft((request, done.job.attempt + 1))
            else:  # a second loss: left failed, not retried again
                result.status = RunStatus.FAILED
                result.reason = f"{result.reason}; it was already a retry, so it is not retried again"
        outcome = self.supervisor.record(done.job.run_id, request, result, done.node, done.environment)
        if not retry:  # a retried attempt stays recorded `interrupted`; the request's outcome is its retry's
            self.outcomes.append(outcome)

    def _interrupt_all(self) -> None:
        """Cancel every run still out and record it `interrupted` (never leave one `running`)."""
        for job in self.executor.cancel_all():
            claimed = self.out.pop(job.run_id, None)
            partial = claimed[1].partial() if claimed else {}
            self.supervisor.finish_held(job.run_id, RunStatus.INTERRUPTED, failure=FailureKind.INTERRUPTED.value,
                                        reason="the harness was interrupted while this run was in progress",
                                        node=job.node, **partial)
        for done in self.executor.finished_meanwhile():  # ended on its own (or stopped, with its counts)
            if done.job.run_id in self.out:
                self._finish(done)


class _LiveEvents:
    """Forwards a run's events to the user and keeps the curve in the store as it grows."""

    def __init__(self, supervisor: Supervisor, run_id: int, request: RunRequest) -> None:
        self.supervisor, self.run_id, self.request = supervisor, run_id, request
        self.last: dict[str, Any] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            self._store(event)
        except LeaseLost:  # another driver took the run over; its end is reported when it finishes
            pass
        if event["type"] == "environment":
            return
        if event["type"] in ("progress", "curve"):
            self.last = event
        self.supervisor.on_event({**event, "run_id": self.run_id, "entry": self.request.entry.name})

    def _store(self, event: dict[str, Any]) -> None:
        store = self.supervisor.store
        if event["type"] == "placed":  # the run has a node now: a node lost later is named by it
            store.update_held(self.run_id, node=event["node"])
        if event["type"] == "curve":
            store.add_curve_point(self.run_id, **{k: event[k] for k in ("train_seconds", "steps", "tokens", "valid_ppl")})
        if event["type"] == "environment":  # the trainer is up: shown while the run is in flight
            store.update_held(self.run_id, environment=event["environment"])

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
