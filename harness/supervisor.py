"""The parent side of a run: spawn the child, watch its clock and memory, kill it, record it.

Each run is a fresh Python process (`python -m harness.worker`, spawned, never forked) in its
own session, so the supervisor can kill it and everything it started. The child receives only the
train and valid splits; the test ids are written for it once it reports that training is over.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import harness
from harness.budget import RunLimits, format_bytes, kill_tree, tree_rss
from harness.channel import Channel, ChannelClosed, ProtocolError
from harness.data import Corpus
from harness.entries import EntrySource
from harness.errors import FailureKind, RunStatus
from harness.scoring import EvalProtocol
from harness.sandbox import Cgroup, Isolation, SandboxSpec, bwrap_command, child_preexec, sandbox_environment
from harness.provenance import hardware_fingerprint, harness_git_commit, run_key
from harness.store import Store

PACKAGE_ROOT = Path(harness.__file__).resolve().parent.parent
POLL_SECONDS = 0.1
MAX_LOG_BYTES = 16 * 2**20       # a run printing more than this is stopped
MAX_CHILD_PROCESSES = 64         # a run starting more processes than this is stopped
STARTUP_CAP_SECONDS = 120.0
LOG_TAIL_BYTES = 8192
CHECK_TIMEOUT_SECONDS = 120.0

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

    def key(self, data_checksums: dict[str, str]) -> str:
        """Everything that determines the result; runs with equal keys are interchangeable."""
        return run_key(
            entry=self.entry.name, source_hash=self.entry.source_hash, hparams=self.hparams, seed=self.seed,
            budget=self.limits.seconds, memory=self.limits.memory_bytes, evals=self.limits.evals,
            device=self.device, hardware=hardware_fingerprint(self.device), data=data_checksums,
            protocol=asdict(self.protocol), harness=harness.__version__,
        )

    def row_fields(self, data_checksums: dict[str, str]) -> dict[str, Any]:
        """The columns a run row starts with."""
        return dict(
            entry=self.entry.name, entry_kind=self.entry.kind, entry_path=str(self.entry.path),
            source_hash=self.entry.source_hash, source=self.entry.source, hparams=self.hparams,
            hparam_overrides=self.hparams, seed=self.seed, device=self.device, threads=self.threads,
            budget_seconds=self.limits.seconds, memory_limit_bytes=self.limits.memory_bytes,
            eval_protocol=asdict(self.protocol), data_checksums=dict(data_checksums),
            harness_version=harness.__version__, git_commit=harness_git_commit(), division=self.division,
            hardware=hardware_fingerprint(self.device), config=self.config,
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


def child_environment(threads: int, seed: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update({
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONHASHSEED": str(seed),
        "PYTHONUNBUFFERED": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    })
    return env


@dataclass(frozen=True)
class Confinement:
    """How children are isolated: the sandbox mode and what they must not see."""

    sandbox: str = "none"
    """`bwrap` or `none` (already resolved from `auto`)."""
    hidden: tuple[Path, ...] = ()
    note: str = ""


class ChildProcess:
    """A `harness.worker` child with its channel, log file, limits and resource watch."""

    def __init__(self, mode: str, spec: dict[str, Any], run_dir: Path, threads: int, seed: int,
                 confinement: Confinement = Confinement(), memory_bytes: int | None = None) -> None:
        run_dir = run_dir.resolve()  # the child runs inside it: every path it gets is absolute
        run_dir.mkdir(parents=True, exist_ok=True)
        spec_path = run_dir / f"{mode}-spec.json"
        spec_path.write_text(json.dumps(spec, indent=1))
        self.log_path = run_dir / "output.log"
        self.cgroup, cgroup_note = (None, "") if memory_bytes is None else Cgroup.create(
            f"ptb-harness-{os.getpid()}-{run_dir.name}-{mode}", memory_bytes)
        self.isolation = Isolation(confinement.sandbox, "cgroup" if self.cgroup else "monitor",
                                   "; ".join(n for n in (confinement.note, cgroup_note) if n))
        parent_sock, child_sock = socket.socketpair()
        command = [sys.executable, "-m", "harness.worker", mode, str(spec_path), str(child_sock.fileno())]
        env = child_environment(threads, seed)
        if confinement.sandbox == "bwrap":
            entries = [spec["entry_path"]] if "entry_path" in spec else spec.get("paths", [])
            readable = [Path(sys.prefix), Path(sys.base_prefix), PACKAGE_ROOT, *map(Path, entries)]
            readable += [Path(spec["data_path"])] if "data_path" in spec else []
            env = {**sandbox_environment(env), "HARNESS_SANDBOX": "bwrap"}
            command = bwrap_command(command, SandboxSpec(run_dir, readable, confinement.hidden, env))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, pass_fds=(child_sock.fileno(),), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, cwd=run_dir, env=env,
                preexec_fn=child_preexec(self.cgroup),
            )
        child_sock.close()
        self.channel = Channel(parent_sock)
        self.exit_code: int | None = None
        self.kernel_peak_rss = 0
        self.sampled_peak_rss = 0

    def log_bytes(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def process_count(self) -> int:
        try:
            return 1 + len(psutil.Process(self.pid).children(recursive=True))
        except psutil.Error:
            return 0

    def oom_killed(self) -> bool:
        return self.cgroup is not None and self.cgroup.oom_killed()

    def release(self) -> None:
        if self.cgroup is not None:
            self.cgroup.kill_all()
            self.cgroup.remove()

    @property
    def pid(self) -> int:
        return self.process.pid

    def sample_memory(self) -> int:
        rss = tree_rss(self.pid)
        self.sampled_peak_rss = max(self.sampled_peak_rss, rss)
        return rss

    def reap(self, block: bool) -> bool:
        """True once the child has exited; records its exit code and the kernel's peak RSS."""
        if self.exit_code is not None:
            return True
        pid, status, usage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return False
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.process.returncode = self.exit_code  # we reaped it; keep Popen consistent
        self.kernel_peak_rss = usage.ru_maxrss * 1024  # Linux reports KiB
        return True

    def kill(self) -> None:
        """Kill the child's whole tree (idempotent) and reap it."""
        kill_tree(self.pid, include_root=self.exit_code is None)
        if self.cgroup is not None:
            self.cgroup.kill_all()  # anything that left the process group is still in the cgroup
        self.reap(block=True)

    def receive(self, timeout: float) -> list[dict[str, Any]]:
        try:
            return self.channel.receive(timeout)
        except ChannelClosed:
            return [{"type": "closed"}]

    def log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                size = log.tell()
                log.seek(max(0, size - LOG_TAIL_BYTES))
                return log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    @property
    def peak_rss(self) -> int:
        cgroup_peak = self.cgroup.peak_bytes() if self.cgroup is not None else 0
        return max(self.kernel_peak_rss, self.sampled_peak_rss, cgroup_peak)


@dataclass
class Watch:
    """The supervisor's own clock of the child's phases, independent of what the child reports."""

    limits: RunLimits
    phase: str = "starting"
    phase_started: float = field(default_factory=time.monotonic)
    training_started: float | None = None
    paused_seconds: float = 0.0
    eval_passes: int = 0

    def enter(self, phase: str) -> None:
        now = time.monotonic()
        if self.phase == "eval":
            # A pass counts as paused only up to its cap, and only for the passes the cadence allows.
            if self.eval_passes <= self.limits.evals + 1:
                self.paused_seconds += min(now - self.phase_started, self.limits.eval_cap_seconds)
        if phase == "training" and self.training_started is None:
            self.training_started = now
        if phase == "eval":
            self.eval_passes += 1
        self.phase, self.phase_started = phase, now

    def overrun(self) -> str | None:
        """Why the child must be killed now for time, or None."""
        now = time.monotonic()
        in_phase = now - self.phase_started
        limits = self.limits
        if self.phase == "starting" and in_phase > STARTUP_CAP_SECONDS:
            return f"the run did not start within {STARTUP_CAP_SECONDS:.0f} s"
        if self.phase == "training" and self.training_started is not None:
            used = now - self.training_started - self.paused_seconds
            if used > limits.kill_after_seconds:
                return (f"training ran {used:.1f} s, past the {limits.seconds:.0f} s budget plus "
                        f"{limits.grace:.0f} s grace (a train_step that does not return?)")
        if self.phase == "eval" and in_phase > limits.eval_cap_seconds + limits.grace:
            return f"a validation pass took over {limits.eval_cap_seconds:.0f} s"
        if self.phase == "scoring" and in_phase > limits.scoring_cap_seconds + limits.grace:
            return f"final scoring took over {limits.scoring_cap_seconds:.0f} s"
        return None


class Supervisor:
    """Runs requests one after another, each in its own child, recording each in the store."""

    def __init__(self, store: Store, corpus: Corpus, runs_dir: Path, on_event: EventSink | None = None,
                 confinement: Confinement = Confinement()) -> None:
        self.store = store
        self.confinement = replace(confinement, hidden=(*confinement.hidden, runs_dir.resolve()))
        self.corpus = corpus
        self.runs_dir = runs_dir.resolve()
        self.on_event = on_event or (lambda event: None)
        self._scratch = tempfile.TemporaryDirectory(prefix="ptb-harness-")
        # Only train and valid go to the child at start; test is written per run after training.
        self.data_path = Path(self._scratch.name) / "train_valid.npz"
        np.savez(self.data_path, vocab=np.array(corpus.vocab),
                 train=corpus.split("train").numpy().astype(np.int32),
                 valid=corpus.split("valid").numpy().astype(np.int32))

    def close(self) -> None:
        self._scratch.cleanup()

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
        if run_id is None:
            run_id = self.store.start_run(run_key=request.key(dict(self.corpus.checksums)),
                                          **request.row_fields(dict(self.corpus.checksums)))
        run_dir = self.runs_dir / str(run_id)
        spec = {
            "entry_path": str(request.entry.path), "hparams": request.hparams, "seed": request.seed,
            "device": request.device, "threads": request.threads, "limits": asdict(request.limits),
            "protocol": asdict(request.protocol), "data_path": str(self.data_path), "run_dir": str(run_dir),
        }
        self.on_event({"type": "run_started", "run_id": run_id, "entry": request.entry.name,
                       "budget": request.limits.seconds})
        tracker = _RunTracker(self, run_id, request, run_dir)
        try:
            child = ChildProcess("run", spec, run_dir, request.threads, request.seed, self.confinement,
                                 request.limits.memory_bytes)
        except OSError as exc:
            return tracker.finish_without_child(f"could not start the run's process: {exc}")
        try:
            return tracker.follow(child)
        except BaseException:  # Ctrl-C or the supervisor failing: never leave the run `running`
            child.kill()
            tracker.record(child, RunStatus.INTERRUPTED, FailureKind.INTERRUPTED,
                           "the harness was interrupted while this run was in progress")
            raise
        finally:
            child.release()
            (run_dir / "test_ids.npy").unlink(missing_ok=True)


class _RunTracker:
    """Follows one child's messages to the end of the run and records the outcome."""

    def __init__(self, supervisor: Supervisor, run_id: int, request: RunRequest, run_dir: Path) -> None:
        self.supervisor = supervisor
        self.store = supervisor.store
        self.run_id = run_id
        self.request = request
        self.run_dir = run_dir
        self.watch = Watch(request.limits)
        self.result: dict[str, Any] | None = None
        self.failure: dict[str, Any] | None = None
        self.killed: tuple[RunStatus, FailureKind, str] | None = None

    def follow(self, child: ChildProcess) -> RunOutcome:
        limits = self.request.limits
        while True:
            try:
                messages = child.receive(POLL_SECONDS)
            except ProtocolError as exc:
                self._kill(child, RunStatus.FAILED, FailureKind.SANDBOX_VIOLATION,
                           f"the run's process broke the harness protocol: {exc}")
                break
            if any(self._handle(child, message) for message in messages):
                break
            if child.reap(block=False):
                # Exited, but something it started may still hold the channel open: drain and stop.
                for message in child.receive(0.2):
                    self._handle(child, message)
                break
            if child.oom_killed():  # the kernel's ceiling hit something in the run's cgroup
                self._kill(child, RunStatus.OUT_OF_MEMORY, FailureKind.OUT_OF_MEMORY, _cgroup_oom(limits))
                break
            violation = _violation(child)
            if violation:
                self._kill(child, RunStatus.FAILED, FailureKind.SANDBOX_VIOLATION, violation)
                break
            rss = child.sample_memory()
            if rss > limits.memory_bytes:
                self._kill(child, RunStatus.OUT_OF_MEMORY, FailureKind.OUT_OF_MEMORY,
                           f"memory reached {format_bytes(rss)}, over the {format_bytes(limits.memory_bytes)} budget")
                break
            reason = self.watch.overrun()
            if reason:
                self._kill(child, RunStatus.TIMEOUT, FailureKind.TIMEOUT, reason)
                break
        child.kill()  # reaps it, and ends anything it left behind
        return self._conclude(child)

    def _handle(self, child: ChildProcess, message: dict[str, Any]) -> bool:
        """Act on one message; True when the run is over (the channel closed)."""
        kind = message.get("type")
        if kind == "closed":
            return True
        if kind == "phase":
            self.watch.enter(str(message.get("phase")))
        elif kind == "environment":
            fields = {k: message.get(k) for k in
                      ("device_name", "torch_version", "python_version", "platform", "threads", "environment")}
            self.store.update_run(self.run_id, **fields)
        elif kind == "described":
            self.store.update_run(self.run_id, display_name=_text(message.get("name")),
                                  authors=_text(message.get("authors")), description=_text(message.get("description")),
                                  track=_text(message.get("track")) or "causal", hparams=message.get("hparams") or {})
        elif kind == "progress":
            self.supervisor.on_event({**message, "run_id": self.run_id, "entry": self.request.entry.name})
        elif kind == "curve":
            point = {k: message.get(k) for k in ("train_seconds", "steps", "tokens", "valid_ppl")}
            self.store.add_curve_point(self.run_id, **point)
            self.supervisor.on_event({**message, "run_id": self.run_id, "entry": self.request.entry.name})
        elif kind == "training_done":
            self.watch.enter("scoring")
            self.store.update_run(self.run_id, steps=message.get("steps"), epochs=message.get("epochs"),
                                  tokens_trained=message.get("tokens"), train_seconds=message.get("train_seconds"),
                                  stop_reason=_text(message.get("stop_reason")), param_count=message.get("param_count"))
            self.supervisor.on_event({**message, "run_id": self.run_id, "entry": self.request.entry.name})
        elif kind == "need_test":
            self._send_test_split(child)
        elif kind == "result":
            self.result = message
        elif kind == "failure":
            self.failure = message
        return False

    def _send_test_split(self, child: ChildProcess) -> None:
        path = self.run_dir / "test_ids.npy"
        np.save(path, self.supervisor.corpus.split("test").numpy().astype(np.int32))
        child.channel.send({"type": "test", "path": str(path)})

    def _kill(self, child: ChildProcess, status: RunStatus, failure: FailureKind, reason: str) -> None:
        child.kill()
        self.killed = (status, failure, reason)

    def _conclude(self, child: ChildProcess) -> RunOutcome:
        limits = self.request.limits
        if self.killed:
            return self.record(child, *self.killed)
        if child.oom_killed():
            return self.record(child, RunStatus.OUT_OF_MEMORY, FailureKind.OUT_OF_MEMORY, _cgroup_oom(limits))
        if child.peak_rss > limits.memory_bytes:
            return self.record(child, RunStatus.OUT_OF_MEMORY, FailureKind.OUT_OF_MEMORY,
                               f"peak memory {format_bytes(child.peak_rss)} exceeded the "
                               f"{format_bytes(limits.memory_bytes)} budget")
        if self.failure:
            failure = FailureKind(self.failure.get("kind", FailureKind.RUNTIME_ERROR.value))
            return self.record(child, failure.status, failure, _text(self.failure.get("reason")),
                               traceback=_text(self.failure.get("traceback")))
        if self.result:
            return self.record(child, RunStatus.OK, None, None)
        return self.record(child, RunStatus.FAILED, FailureKind.RUNTIME_ERROR, _exit_reason(child.exit_code))

    def record(self, child: ChildProcess, status: RunStatus, failure: FailureKind | None, reason: str | None,
               traceback: str | None = None) -> RunOutcome:
        fields: dict[str, Any] = {
            "failure": failure.value if failure else None, "reason": reason, "traceback": traceback,
            "log_tail": child.log_tail(), "peak_memory_bytes": child.peak_rss or None,
            "isolation": child.isolation.as_dict(),
        }
        if status is RunStatus.OK and self.result:
            fields.update(_result_fields(self.result))
        self.store.finish_run(self.run_id, status, **fields)
        outcome = RunOutcome(
            run_id=self.run_id, entry=self.request.entry.name, status=status, failure=fields["failure"],
            reason=reason, valid_ppl=fields.get("valid_ppl"), valid_tokens=fields.get("valid_tokens"),
            test_ppl=fields.get("test_ppl"), test_tokens=fields.get("test_tokens"),
            peak_memory_bytes=fields["peak_memory_bytes"],
        )
        run = self.store.get_run(self.run_id)
        if run is not None:
            outcome.train_seconds, outcome.steps = run.train_seconds, run.steps
        self.supervisor.on_event({"type": "run_finished", **outcome.as_dict()})
        return outcome

    def finish_without_child(self, reason: str) -> RunOutcome:
        self.store.finish_run(self.run_id, RunStatus.FAILED, failure=FailureKind.HARNESS_ERROR.value, reason=reason)
        return RunOutcome(self.run_id, self.request.entry.name, RunStatus.FAILED,
                          FailureKind.HARNESS_ERROR.value, reason)


def _result_fields(result: dict[str, Any]) -> dict[str, Any]:
    valid, test = result.get("valid") or {}, result.get("test") or {}
    return {
        "valid_ppl": valid.get("ppl"), "valid_tokens": valid.get("tokens"), "valid_nll_sum": valid.get("nll_sum"),
        "test_ppl": test.get("ppl"), "test_tokens": test.get("tokens"), "test_nll_sum": test.get("nll_sum"),
        "valid_accuracy": valid.get("accuracy"), "test_accuracy": test.get("accuracy"),
        "valid_sentence_nll": _float32_bytes(valid.get("sentence_nll")),
        "test_sentence_nll": _float32_bytes(test.get("sentence_nll")),
        "param_count": result.get("param_count"), "peak_gpu_memory_bytes": result.get("peak_gpu_memory_bytes"),
        "checks": result.get("checks") or {},
    }


def _cgroup_oom(limits: RunLimits) -> str:
    return (f"memory reached the {format_bytes(limits.memory_bytes)} budget: the kernel's memory limit "
            "(cgroup) stopped the run")


def _violation(child: ChildProcess) -> str | None:
    """A limit on what a run may do besides time and memory, broken."""
    if child.log_bytes() > MAX_LOG_BYTES:
        return f"the run printed more than {format_bytes(MAX_LOG_BYTES)} of output"
    if child.process_count() > MAX_CHILD_PROCESSES:
        return f"the run started more than {MAX_CHILD_PROCESSES} processes"
    return None


def _float32_bytes(values: Any) -> bytes | None:
    if not isinstance(values, list):
        return None
    return np.asarray(values, dtype="<f4").tobytes()


def outcome_of(run: Any) -> RunOutcome:
    """The outcome recorded in a stored run (for a reused result)."""
    return RunOutcome(
        run_id=run.id, entry=run.entry, status=RunStatus(run.status), failure=run.failure, reason=run.reason,
        valid_ppl=run.valid_ppl, valid_tokens=run.valid_tokens, test_ppl=run.test_ppl, test_tokens=run.test_tokens,
        train_seconds=run.train_seconds, steps=run.steps, peak_memory_bytes=run.peak_memory_bytes,
    )


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        signal_number = -code
        hint = " (SIGKILL: possibly the kernel's out-of-memory killer)" if signal_number == 9 else ""
        return f"the run's process was killed by signal {signal_number}{hint} before it reported a result"
    return f"the run's process exited with code {code} before it reported a result"


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def run_child_once(mode: str, spec: dict[str, Any], work_dir: Path, timeout: float = CHECK_TIMEOUT_SECONDS,
                   threads: int = 1, confinement: Confinement = Confinement()) -> tuple[dict[str, Any] | None, str]:
    """Run a short `check` or `describe` child; return its last message and its log tail."""
    child = ChildProcess(mode, spec, work_dir, threads=threads, seed=0, confinement=confinement)
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    try:
        while time.monotonic() < deadline:
            messages = child.receive(POLL_SECONDS)
            if any(m["type"] == "closed" for m in messages):
                break
            last = messages[-1] if messages else last
        else:
            last = {"type": "failure", "kind": FailureKind.TIMEOUT.value,
                    "reason": f"did not finish within {timeout:.0f} s"}
    except ProtocolError as exc:
        last = {"type": "failure", "kind": FailureKind.SANDBOX_VIOLATION.value, "reason": str(exc)}
    finally:
        child.kill()
    return last, child.log_tail()
