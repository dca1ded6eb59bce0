"""One run, start to end, on the machine it is called on: the supervisor's authority in one place.

`execute_run(spec, data, ...)` starts the scorer and the trainer in their sandboxes, feeds the
trainer batches, keeps the training clock, decides when a validation pass happens (freezing the
trainer's cgroup meanwhile), builds every scoring window, checks and scores the rows that come
back, enforces memory, process, output, disk and time limits, and returns a `RunResult`. It
touches no database (the caller records the result), follows no path a child could have made,
and never raises because of what an entry does: every way a run can end is classified.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import select
import socket
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from harness.budget import RunLimits, format_bytes, kill_tree, tree_rss
from harness.clock import TrainingClock
from harness.cpus import format_cpus
from harness.errors import FailureKind, RunStatus
from harness.feed import MAX_BATCH_TOKENS, TrainFeed
from harness.protocol import Channel, ChildGone, ProtocolViolation, child_failure, validate
from harness.sandbox import (
    Cgroup, Confinement, DiskUnreadable, SandboxSpec, cgroup_name, disk_usage, remove_tree, start_sandboxed,
    sweep_orphan_cgroups,
)
from harness.scoring import EvalProtocol, MaskedScore, Request, ScoreFailure, ScorePass, SplitScore, payload_of, sentence_nll

POLL_SECONDS = 0.1
LIMITS_EVERY_SECONDS = 0.2
STARTUP_CAP_SECONDS = 120.0
SCORER_SETUP_CAP_SECONDS = 60.0  # a scorer's import and setup may not take longer than this
LOAD_CAP_SECONDS = 60.0          # nor may loading a checkpoint
# Scorer work is not training time up to these allowances (importing torch, building the model, reading
# a checkpoint); beyond them it is counted as training time, so no training can hide in a scorer.
SCORER_SETUP_ALLOWANCE_SECONDS = 20.0
LOAD_ALLOWANCE_SECONDS = 5.0
MAX_LOG_BYTES = 16 * 2**20       # a run printing more than this is stopped
MAX_CHILD_PROCESSES = 64         # a run starting more processes than this is stopped
SANDBOX_PLUMBING = 4             # bwrap, setpriv and bwrap again sit above the child's interpreter
LOG_TAIL_BYTES = 8192
DISK_CHECK_SECONDS = 1.0
DEFAULT_DISK_BYTES = 2**30
MAX_CONTEXT = 1024               # eval_context cap: bounds the shared memory of one block of rows
SLOTS = 2                        # blocks of rows in flight: the scorer fills one while the supervisor reads the other
PROGRESS_EVERY_SECONDS = 0.25
MAX_EPOCH_PASSES = 100         # validation passes of an entry that validates at every epoch end
PREFETCH_MARGIN_STEPS = 3.0      # hand a batch out ahead only this many recent steps before a decision
PREFETCH_MAX_BYTES = 64 * 1024   # and only a batch this small (it waits in the socket's buffer)

EventSink = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class RunData:
    """The corpus as the supervisor holds it: vocabulary and the three splits as int32 ids."""

    vocab: tuple[str, ...]
    eos_id: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    checksums: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_corpus(cls, corpus: Any) -> RunData:
        vocab = tuple(corpus.vocab)
        return cls(vocab, vocab.index("<eos>"), *(corpus.split(s).numpy().astype(np.int32)
                                                 for s in ("train", "valid", "test")), dict(corpus.checksums))


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run, free of host paths: it can be placed on any machine."""

    entry_name: str
    source: str
    source_hash: str
    track: str
    hparams: dict[str, Any]
    seed: int
    device: str
    threads: int
    limits: RunLimits
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    disk_bytes: int = DEFAULT_DISK_BYTES
    eval_at_steps: tuple[int, ...] = ()
    """Validation passes after these steps instead of on the clock (harness check)."""
    step_cap: int | None = None
    """Stop after this many steps whatever the entry's max_steps, once one epoch has ended (harness
    check: every hook, on_epoch_end included, runs at least once)."""
    batch_independence: tuple[int, ...] = ()
    """Score valid again with these scoring batch sizes and compare (harness check)."""


@dataclass
class RunResult:
    status: RunStatus
    failure: FailureKind | None = None
    reason: str | None = None
    traceback: str | None = None
    log_tail: str = ""
    valid: SplitScore | MaskedScore | None = None
    test: SplitScore | MaskedScore | None = None
    valid_sentence_nll: np.ndarray | None = None
    test_sentence_nll: np.ndarray | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    epochs: float = 0.0
    tokens: int = 0
    train_seconds: float = 0.0
    stop_reason: str = ""
    param_count: int | None = None
    peak_memory_bytes: int = 0
    scorer_peak_memory_bytes: int = 0
    cpu_seconds: float | None = None
    max_threads: int = 0
    paused_counted: bool = False
    hparams: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    isolation: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    audits: dict[str, int] = field(default_factory=dict)
    context: int = 0
    window: int = 0
    scorer_setup_seconds: float | None = None
    """Wall seconds the two scorers took to import and set up the entry (the last set of them)."""
    charged_seconds: float = 0.0
    """Scorer set-up and checkpoint loading beyond their allowances, counted as training time."""
    pass_seconds: list[dict[str, float]] = field(default_factory=list)
    hooks: dict[str, int] = field(default_factory=dict)
    prefetched: int = 0
    final_scoring_seconds: float | None = None
    """Wall seconds of the final scoring of valid and test (fresh scorers ready to both scored)."""
    """Batches handed out before the trainer asked (so it never waited for them)."""
    """How often the supervisor had the trainer call each hook (what it sent, not what it was told)."""
    """Per validation pass: wall seconds of the whole pass (checkpoint, freeze, load, score, thaw) and of the scoring."""

    @property
    def ok(self) -> bool:
        return self.status is RunStatus.OK


class RunEnd(Exception):
    """The run is over before its end: how, and why."""

    def __init__(self, status: RunStatus, failure: FailureKind, reason: str, traceback: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.failure, self.reason, self.traceback = status, failure, reason, traceback


def lean_supervisor() -> None:
    """For a process that supervises runs: torch's own thread pool stays at one thread, since runs side
    by side share this process and a pool sized for one run's lease would spill onto its neighbour's
    cores. The one heavy piece, checking rows of log-probs, spreads over the run's own threads
    (harness.scoring.check_rows)."""
    torch.set_num_threads(1)


def execute_run(spec: RunSpec, data: RunData, confinement: Confinement, run_dir: Path,
                on_event: EventSink | None = None, cpus: tuple[int, ...] = (),
                cancel: threading.Event | None = None) -> RunResult:
    """Run `spec` to its end in `run_dir` (made here; only the supervisor writes outside its work dirs).

    `cpus`: the run's CPU lease (harness.cpus); every sandboxed process is confined to it. `cancel`:
    set from another thread to end the run `interrupted` (its processes killed, nothing left behind)."""
    run = _Run(spec, data, confinement, run_dir, on_event or (lambda event: None), cpus, cancel)
    return run.execute()


# --- The children ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildLimits:
    """What one sandboxed process gets: its memory ceiling and CPU quota, seed, disk and device."""

    memory_bytes: int
    threads: int
    seed: int
    disk_bytes: int = DEFAULT_DISK_BYTES
    gpu: bool = False
    cpus: tuple[int, ...] = ()
    """The run's CPU lease (empty: every CPU, with the CPU-time quota only)."""


def sandboxed_argv(module: str, channel_fd: int) -> list[str]:
    """The interpreter command for a module of harness.sandboxed: no user site-packages and no
    writable folder on the import path (the environment is cleared, so PYTHONHASHSEED still holds)."""
    interpreter = [sys.executable, "-s", "-P"] if sys.version_info >= (3, 11) else [sys.executable, "-I"]
    return [*interpreter, "-m", f"harness.sandboxed.{module}", str(channel_fd)]


class SandboxedChild:
    """A sandboxed process on participant code: its channel, its output pipe, its cgroup, its queue of
    frames (validated by whoever reads them)."""

    def __init__(self, name: str, module: str, work_dir: Path, read_only: tuple[Path, ...],
                 extra_fds: tuple[int, ...], spec_message: dict[str, Any], limits: ChildLimits,
                 confinement: Confinement, log_path: Path) -> None:
        self.name, self.work_dir, self.limits = name, work_dir, limits
        self.last_disk_check = 0.0
        self.cgroup, cgroup_note = Cgroup.create(cgroup_name(name),
                                                 limits.memory_bytes, float(limits.threads), limits.cpus)
        self.note = cgroup_note
        parent_end, child_end = socket.socketpair()
        read_end, write_end = os.pipe()
        environment = {"OMP_NUM_THREADS": str(limits.threads), "MKL_NUM_THREADS": str(limits.threads),
                       "PYTHONHASHSEED": str(limits.seed), "PYTHONUNBUFFERED": "1",
                       "PYTHONDONTWRITEBYTECODE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        sandbox = SandboxSpec(work_dir=work_dir, read_only=read_only, tmp_bytes=limits.disk_bytes,
                              environment=environment, gpu=limits.gpu, cpus=limits.cpus)
        try:
            self.process = start_sandboxed(sandboxed_argv(module, child_end.fileno()), sandbox, confinement,
                                           self.cgroup, pass_fds=(child_end.fileno(), *extra_fds), stdout=write_end)
        finally:
            child_end.close()
            os.close(write_end)
        os.set_blocking(read_end, False)
        self.log_fd = read_end
        self.log = log_path.open("ab")
        self.log_bytes = 0
        self.tail = bytearray()
        self.channel = Channel(parent_end, name)
        self.queue: deque[Any] = deque()
        self.exit_code: int | None = None
        self.sampled_peak = 0
        self.released = False
        self.channel.send(spec_message)

    def disk_due(self) -> bool:
        return time.monotonic() - self.last_disk_check >= DISK_CHECK_SECONDS

    def check_limits(self) -> None:
        """Raise RunEnd if this process broke a limit: memory, processes, output, or (once a second) disk."""
        limits = self.limits
        if self.cgroup is not None and self.cgroup.oom_killed():
            raise RunEnd(RunStatus.OUT_OF_MEMORY, FailureKind.OUT_OF_MEMORY,
                         f"memory reached the {format_bytes(limits.memory_bytes)} budget in the {self.name}: the "
                         "kernel's memory limit (cgroup) stopped it")
        rss = self.sample()
        if rss > limits.memory_bytes:
            raise RunEnd(RunStatus.OUT_OF_MEMORY, FailureKind.OUT_OF_MEMORY,
                         f"memory of the {self.name} reached {format_bytes(rss)}, over the "
                         f"{format_bytes(limits.memory_bytes)} budget")
        if self.process_count() > MAX_CHILD_PROCESSES:
            raise RunEnd(RunStatus.FAILED, FailureKind.SANDBOX_VIOLATION,
                         f"the run started more than {MAX_CHILD_PROCESSES} processes")
        if self.log_bytes > MAX_LOG_BYTES:
            raise RunEnd(RunStatus.FAILED, FailureKind.SANDBOX_VIOLATION,
                         f"the run printed more than {format_bytes(MAX_LOG_BYTES)} of output")
        if not self.disk_due():
            return
        self.last_disk_check = time.monotonic()
        try:
            used, entries = disk_usage(self.work_dir)
        except DiskUnreadable as exc:
            raise RunEnd(RunStatus.FAILED, FailureKind.SANDBOX_VIOLATION,
                         f"the {self.name} made {exc} in its run directory") from exc
        if used > limits.disk_bytes or entries >= 100_000:
            raise RunEnd(RunStatus.FAILED, FailureKind.SANDBOX_VIOLATION,
                         f"the {self.name} wrote {format_bytes(used)} in {entries:,} files to its run "
                         f"directory, over the {format_bytes(limits.disk_bytes)} disk quota")

    def poll(self, timeout: float) -> None:
        """Wait up to `timeout` for this child alone, reading its frames and its output."""
        try:
            readable, _, _ = select.select([self.channel, self.log_fd], [], [], timeout)
        except (OSError, ValueError):
            return
        if self.log_fd in readable:
            self.drain_log()
        if self.channel in readable:
            self.pump()

    # Output: read from a pipe the supervisor owns, never from a file in the run directory.
    def drain_log(self) -> None:
        while True:
            try:
                chunk = os.read(self.log_fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                return
            if not chunk:
                return
            self.log_bytes += len(chunk)
            if self.log_bytes <= MAX_LOG_BYTES:
                self.log.write(chunk)
            self.tail += chunk
            del self.tail[:-LOG_TAIL_BYTES]

    def pump(self) -> None:
        self.channel.pump()
        self.queue.extend(self.channel.frames())

    def alive(self) -> bool:
        if self.exit_code is not None:
            return False
        code = self.process.poll()
        if code is None:
            return True
        self.exit_code = code
        return False

    def sample(self) -> int:
        """Memory now: the kernel's count for the cgroup where there is one (cheap), else the tree's RSS."""
        usage = self.cgroup.usage_bytes() if self.cgroup is not None else None
        rss = usage if usage is not None else tree_rss(self.process.pid)
        self.sampled_peak = max(self.sampled_peak, rss)
        return rss

    def process_count(self) -> int:
        if self.cgroup is not None and "pids" in self.cgroup.paths:
            return len(self.cgroup.pids()) - SANDBOX_PLUMBING
        try:
            return len(psutil.Process(self.process.pid).children(recursive=True)) + 1 - SANDBOX_PLUMBING
        except psutil.Error:
            return 0

    @property
    def peak(self) -> int:
        return max(self.sampled_peak, self.cgroup.peak_bytes() if self.cgroup else 0)

    def kill(self) -> None:
        kill_tree(self.process.pid, include_root=self.exit_code is None)
        if self.cgroup is not None:
            self.cgroup.thaw()  # a frozen process cannot die
            self.cgroup.kill_all()
        try:
            self.process.wait(timeout=10)
        except Exception:  # noqa: BLE001 - a process that does not die is killed again at release
            kill_tree(self.process.pid)
        if self.exit_code is None:
            self.exit_code = self.process.returncode
        self.drain_log()

    def release(self) -> None:
        """Kill, close and remove everything of this child (once)."""
        if self.released:
            return
        self.released = True
        self.kill()
        self.channel.close()
        os.close(self.log_fd)
        self.log.close()
        if self.cgroup is not None:
            self.cgroup.kill_all()
            self.cgroup.remove()


# --- One run ------------------------------------------------------------------------------------------


class _Run:
    def __init__(self, spec: RunSpec, data: RunData, confinement: Confinement, run_dir: Path,
                 on_event: EventSink, cpus: tuple[int, ...] = (), cancel: threading.Event | None = None) -> None:
        self.spec, self.data, self.confinement, self.on_event = spec, data, confinement, on_event
        self.cpus, self.cancel = cpus, cancel
        self.answer_floor = 0.0
        self.run_dir = run_dir.resolve()
        self.clock = TrainingClock()
        self.result = RunResult(status=RunStatus.RUNNING)
        self.children: list[SandboxedChild] = []
        self.trainer: SandboxedChild | None = None
        self.scorers: list[SandboxedChild] = []
        self.loaded: dict[int, int] = {}
        self.feed: TrainFeed | None = None
        self.phase = "starting"
        self.last_limits_check = 0.0
        self.last_progress = 0.0
        self.last_loss: float | None = None
        self.context = 0
        self.window = spec.protocol.window
        self.mask_id = len(data.vocab) if spec.track == "mlm" else None
        self.audits = {"causality_audits": 0, "replay_probes": 0}
        self.shm_fds: list[int] = []  # one shared block per scorer, new for every pair started
        self.shms: list[mmap.mmap] = []

    # --- The whole run --------------------------------------------------------------------------

    def execute(self) -> RunResult:
        try:
            self._prepare()
            self._train()
            self._final_scoring()
            self.result.status = RunStatus.OK
        except RunEnd as end:
            self._end(end)
        except (ChildGone, ProtocolViolation) as exc:  # a message to a child that is gone or stopped reading
            self._end(self._send_failed(exc))
        except Exception as exc:  # a fault of the harness itself: this run fails, recorded; the others go on
            self.result.status, self.result.failure = RunStatus.FAILED, FailureKind.HARNESS_ERROR
            self.result.reason = f"the harness failed during this run: {type(exc).__name__}: {exc}"
            self.result.traceback = traceback.format_exc()
        finally:
            try:
                self._shutdown()
            except Exception as exc:  # noqa: BLE001 - a failed clean-up never changes the run's verdict
                self.result.log_tail = f"{self.result.log_tail}\n(the harness's clean-up failed: {type(exc).__name__}: {exc})"
        return self.result

    def _end(self, end: RunEnd) -> None:
        if self.cancel is not None and self.cancel.is_set() and end.status is not RunStatus.INTERRUPTED:
            # The harness is stopping this run: what the run's thread saw first (a child already
            # gone, a channel closed) is the stop's doing, not the entry's.
            end = RunEnd(RunStatus.INTERRUPTED, FailureKind.INTERRUPTED,
                         f"the harness was interrupted while this run was in progress (it then saw: {end.reason})")
        self.result.status, self.result.failure = end.status, end.failure
        self.result.reason, self.result.traceback = end.reason, end.traceback

    def _send_failed(self, exc: Exception) -> RunEnd:
        """A send failed: the child's doing (it died, hung up or stopped reading), never the harness's.
        A child that ended is classified as any ended child is (its report, memory, exit code)."""
        for child in self.children:
            if not child.released and (not child.alive() or child.channel.closed):
                try:
                    self._child_ended(child)
                except RunEnd as end:
                    return end
        detail = str(exc) or "its channel was closed"
        return RunEnd(RunStatus.FAILED, FailureKind.SANDBOX_VIOLATION,
                      f"a process of the run stopped taking the harness's messages: {detail}")

    def _prepare(self) -> None:
        sweep_orphan_cgroups()  # a killed supervisor's groups (frozen processes included) go first
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o755)
        # The entry's file, written by the supervisor from the source it hashed, shown read-only.
        entry_dir = self.run_dir / "entry"
        entry_dir.mkdir(exist_ok=True)
        self.entry_path = entry_dir / f"{self.spec.entry_name.replace('/', '_')}.py"  # kept-apart names hold a /
        self.entry_path.write_text(self.spec.source, encoding="utf-8")
        os.chmod(self.entry_path, 0o444)
        for name in ("trainer", "scorer0", "scorer1"):
            work = self.run_dir / name
            remove_tree(work)
            work.mkdir()
        rows = self.spec.protocol.batch_size * max(self.spec.protocol.window + MAX_CONTEXT, 128)
        self.slot_bytes = rows * len(self.data.vocab) * 4
        self.block_buffer = np.empty(self.slot_bytes // 4, dtype=np.float32)

    def _fresh_shared_blocks(self) -> None:
        """One new shared block per scorer, for every pair of scorers started. A block is far larger
        than the rows the supervisor reads back from it, and a scorer can write anywhere in it: the
        final scorers given the blocks the pass scorers had would find whatever those left there
        (a hostile review carried valid from the passes into final scoring this way: valid 2.65)."""
        self._close_shared_blocks()
        for _ in range(2):  # inheritable, sparse (all zeros) until written
            fd = os.memfd_create("ptb-harness-rows", 0)
            os.ftruncate(fd, SLOTS * self.slot_bytes)
            self.shm_fds.append(fd)
            self.shms.append(mmap.mmap(fd, SLOTS * self.slot_bytes))

    def _close_shared_blocks(self) -> None:
        for shared, fd in zip(self.shms, self.shm_fds):
            shared.close()
            os.close(fd)
        self.shm_fds, self.shms = [], []

    def _child_spec(self, work_dir: Path) -> dict[str, Any]:
        return {"type": "spec", "entry_path": str(self.entry_path), "hparams": self.spec.hparams,
                "seed": self.spec.seed, "threads": self.spec.threads, "device": self.spec.device,
                "memory_bytes": self.spec.limits.memory_bytes, "work_dir": str(work_dir)}

    def _start_scorers(self) -> None:
        """Two scorers, started when first needed (a validation pass, with the trainer frozen, or the
        final scoring): their import and setup are untimed and never compete with timed training.
        Each scores half the windows and audits the other's, so neither can pass an audit by
        remembering the window it copies."""
        self.phase = "starting scorers"
        self._fresh_shared_blocks()
        trainer_work = self.run_dir / "trainer"
        # The two scorers work at the same time (one lane each): they share the run's threads and, with
        # a CPU lease, its CPUs, instead of each oversubscribing the cores with every thread.
        threads = max(1, self.spec.threads // 2)
        for lane in range(2):
            work = self.run_dir / f"scorer{lane}"
            remove_tree(work)  # a new scorer starts with nothing of an earlier one
            work.mkdir()
            shm = self.shm_fds[lane]
            spec = {**self._child_spec(work), "threads": threads, "checkpoint_dir": str(trainer_work), "shm_fd": shm,
                    "shm_bytes": SLOTS * self.slot_bytes, "slot_bytes": self.slot_bytes}
            cpus = self.cpus[lane::2] if len(self.cpus) >= 2 else self.cpus
            self.scorers.append(self._spawn(f"scorer {lane + 1}", "scorer", work, (self.entry_path, trainer_work),
                                            (shm,), spec, threads, cpus))
        began = time.monotonic()
        deadline = began + SCORER_SETUP_CAP_SECONDS
        layouts = set()
        for scorer in self.scorers:
            hparams = self._wait(scorer, deadline, {"hparams"}, f"the {scorer.name} did not start")
            scorer.channel.send(self._context(hparams))
        for scorer in self.scorers:
            ready = self._wait(scorer, deadline, {"ready"},
                               f"the {scorer.name} did not finish its import and setup within "
                               f"{SCORER_SETUP_CAP_SECONDS:.0f} s (untimed work is capped)")
            layouts.add((ready["eval_context"], ready["eval_window"]))
        if len(layouts) != 1:
            raise RunEnd(RunStatus.FAILED, FailureKind.CONTRACT_VIOLATION,
                         f"two scorer processes built from the same checkpoint disagree on (eval_context, "
                         f"eval_window): {sorted(layouts)}; set them deterministically in setup")
        (self.context, window), = layouts
        self.result.scorer_setup_seconds = time.monotonic() - began
        self._charge(self.result.scorer_setup_seconds - SCORER_SETUP_ALLOWANCE_SECONDS, "the scorers' set-up")
        self.window = min(window, self.spec.protocol.window)
        self.result.context, self.result.window = self.context, self.window

    def _spawn(self, name: str, module: str, work: Path, read_only: tuple[Path, ...], fds: tuple[int, ...],
               spec: dict[str, Any], threads: int | None = None, cpus: tuple[int, ...] | None = None) -> SandboxedChild:
        limits = ChildLimits(self.spec.limits.memory_bytes, threads or self.spec.threads, self.spec.seed,
                             self.spec.disk_bytes, self.spec.device == "cuda", self.cpus if cpus is None else cpus)
        try:
            child = SandboxedChild(name, module, work, read_only, fds, spec, limits, self.confinement,
                                   self.run_dir / f"{name.replace(' ', '')}.log")
        except (OSError, ChildGone, ProtocolViolation) as exc:
            raise RunEnd(RunStatus.FAILED, FailureKind.HARNESS_ERROR, f"could not start the {name}: {exc}") from exc
        self.children.append(child)
        return child

    def _context(self, hparams: dict[str, Any]) -> dict[str, Any]:
        batch, seq_len = hparams["batch_size"], hparams["seq_len"]
        if batch * min(seq_len, MAX_BATCH_TOKENS) > MAX_BATCH_TOKENS or batch > self.data.train.size:
            raise RunEnd(RunStatus.FAILED, FailureKind.CONTRACT_VIOLATION,
                         f"batch_size {batch} x seq_len {seq_len} is too large (at most {MAX_BATCH_TOKENS:,} "
                         f"tokens per batch, batch_size at most the {self.data.train.size:,} train tokens)")
        row_length = self.data.train.size // batch
        limits = self.spec.limits
        return {"type": "context", "vocab": list(self.data.vocab), "eos_id": self.data.eos_id,
                "mask_id": self.mask_id, "budget_seconds": limits.seconds, "memory_bytes": limits.memory_bytes,
                "evals": self._planned_passes(), "steps_per_epoch": -(-row_length // seq_len),
                "train_tokens": int(self.data.train.size), "eval_window": self.spec.protocol.window,
                "eval_segment_tokens": self.spec.protocol.segment_tokens,
                "eval_batch_size": self.spec.protocol.batch_size}

    def _planned_passes(self) -> int:
        return len(self.spec.eval_at_steps) if self.spec.eval_at_steps else self.spec.limits.evals

    # --- Training -----------------------------------------------------------------------------------

    def _train(self) -> None:
        self.phase = "training"
        work = self.run_dir / "trainer"
        self.trainer = self._spawn("trainer", "trainer", work, (self.entry_path,), (), self._child_spec(work))
        environment = self._wait(self.trainer, time.monotonic() + STARTUP_CAP_SECONDS, {"environment"},
                                 "the trainer did not start")
        self.clock.start()  # the first message comes before any participant code is imported
        self.result.environment = {k: v for k, v in environment.items() if k != "type"}
        self.on_event({"type": "environment", "environment": self.result.environment})
        hparams = self._wait(self.trainer, self._training_deadline(), {"hparams"}, self._overrun_reason)
        self.result.hparams = hparams["values"]
        self.trainer.channel.send(self._context(hparams))
        self.feed = TrainFeed(self.data.train, self.data.eos_id, hparams["batch_size"], hparams["seq_len"],
                              hparams["max_steps"], hparams["max_epochs"], self.mask_id, len(self.data.vocab),
                              self.spec.seed)
        self.epoch_passes = bool(hparams.get("validate_every_epoch")) and not self.spec.eval_at_steps
        passes = MAX_EPOCH_PASSES if self.epoch_passes else self._planned_passes()
        pass_times = [self.spec.limits.seconds * (k + 1) / (passes + 1) for k in range(passes)]
        seq, pending, epoch_closed = 0, None, False
        # Every message the trainer gets is answered by one `next`: `sent` holds the kinds of those not
        # answered yet. One batch may go out ahead (prefetched) so the trainer never waits for the next
        # one; while it holds one, the supervisor decides nothing else (passes, epoch ends, the stop
        # are decided when the trainer holds no batch, as before).
        sent: deque[str] = deque(["context"])
        self.step_seconds: deque[float] = deque(maxlen=8)
        self.fixed_windows = not (self.spec.eval_at_steps or self.spec.step_cap is not None)
        last_ack = None
        while True:
            request = self._wait(self.trainer, self._training_deadline(), {"next"}, self._overrun_reason)
            if not sent:  # one `next` per message received: a trainer never has more to ask
                raise RunEnd(RunStatus.FAILED, FailureKind.SANDBOX_VIOLATION,
                             "the trainer broke the harness protocol: it sent a `next` for no message it was given")
            acked = sent.popleft()
            now = time.monotonic()
            if acked == "batch" and last_ack is not None:
                self.step_seconds.append(now - last_ack)
            last_ack = now if acked == "batch" else None
            self.fixed_windows = self.fixed_windows and request["seq_len"] is None
            self.last_loss = request["loss"] if request["loss"] is not None else self.last_loss
            self._progress()
            if sent:  # the trainer holds a batch handed out ahead: nothing else is decided now
                if self._may_prefetch(passes, pass_times):
                    self._send_batch(None)
                    sent.append("batch")
                    self.result.prefetched += 1
                continue
            if pending is not None:
                self.trainer.channel.send(pending)
                sent.append("validation")
                self._hook("on_validation")
                pending = None
                continue
            if self.feed.at_epoch_end():  # an epoch that ran out is closed before anything else
                self.trainer.channel.send({"type": "epoch_end", "epoch": self.feed.end_epoch()})
                sent.append("epoch_end")
                self._hook("on_epoch_end")
                epoch_closed = True
                continue
            stop = self._stop_reason()
            if stop:
                break
            done = len(self.result.curve)
            due = done < passes and (epoch_closed if self.epoch_passes else self._pass_due(done, pass_times))
            epoch_closed = False
            if due:
                seq += 1
                began = time.monotonic()
                self.trainer.channel.send({"type": "checkpoint", "seq": seq})
                sent.append("checkpoint")
                self._hook("prepare_for_eval", "resume_training")
                self._wait_seq(self.trainer, self._training_deadline(), "checkpoint_ready", seq)
                pending = self._validation_pass(seq, done, passes)
                self.result.pass_seconds[-1]["total"] = time.monotonic() - began
                self.answer_floor = time.monotonic() + self.spec.limits.grace
                continue
            self._send_batch(request["seq_len"])
            sent.append("batch")
            if self._may_prefetch(passes, pass_times):
                self._send_batch(None)
                sent.append("batch")
                self.result.prefetched += 1
        self.result.stop_reason = stop
        self.result.train_seconds = self.clock.elapsed
        self._record_counts()
        seq += 1
        self.trainer.channel.send({"type": "stop", "seq": seq, "reason": stop})
        self._hook("on_train_end", "prepare_for_eval")
        self._wait_seq(self.trainer, self._training_deadline(), "final_ready", seq)
        self.clock.stop()
        self.final_seq = seq
        self.result.peak_memory_bytes = self.trainer.peak
        self._end_trainer()

    def _send_batch(self, seq_len: int | None) -> None:
        assert self.feed is not None and self.trainer is not None
        batch = self.feed.next_batch(seq_len)
        self._hook("train_step", *(["on_epoch_start"] if batch.epoch_start else []))
        message = {"type": "batch", "shape": list(batch.inputs.shape), "epoch": batch.epoch,
                   "epoch_start": batch.epoch_start, "step": self.feed.steps - 1,
                   "train_seconds": self.clock.elapsed}
        payload = b"".join(a.astype("<i4", copy=False).tobytes() for a in (batch.inputs, batch.targets))
        # (2, B, T) little-endian int32. A trainer that stops reading holds this send at most until
        # its training deadline (the clock is not serviced meanwhile), then the run ends.
        self.trainer.channel.send(message, payload, timeout=self._training_deadline() - time.monotonic())

    def _may_prefetch(self, passes: int, pass_times: list[float]) -> bool:
        """Whether one more batch may go out before the trainer asks: only for fixed windows, inside an
        epoch, and while no decision (a pass, the budget, a step or epoch limit) is due within a few
        recent steps, so everything is decided exactly where it would be without it."""
        assert self.feed is not None
        if not self.fixed_windows or len(self.step_seconds) < 3 or self.feed.at_epoch_end() or self.feed.finished():
            return False
        if self.feed.batch_size * self.feed.seq_len * 8 > PREFETCH_MAX_BYTES:
            return False  # it must fit the channel's buffer: the send must not wait on a busy trainer
        margin = PREFETCH_MARGIN_STEPS * max(self.step_seconds)
        elapsed = self.clock.elapsed
        if self.spec.limits.seconds - elapsed <= margin:
            return False
        done = len(self.result.curve)
        if self.epoch_passes:
            return True  # those passes follow epoch ends, which a prefetched batch never crosses
        return done >= passes or pass_times[done] - elapsed > margin

    def _hook(self, *names: str) -> None:
        for name in names:
            self.result.hooks[name] = self.result.hooks.get(name, 0) + 1

    def _pass_due(self, done: int, pass_times: list[float]) -> bool:
        if self.spec.eval_at_steps:
            return self.feed is not None and self.feed.steps >= self.spec.eval_at_steps[done]
        return self.clock.elapsed >= pass_times[done]

    def _stop_reason(self) -> str:
        assert self.feed is not None
        if self.spec.step_cap is not None and self.feed.steps >= self.spec.step_cap and self.feed.epoch >= 1:
            return "max_steps"
        if self.clock.elapsed >= self.spec.limits.seconds:
            return "budget"
        if self.feed.finished():
            return self.feed.finished()
        return ""

    def _record_counts(self) -> None:
        assert self.feed is not None
        self.result.steps, self.result.tokens = self.feed.steps, self.feed.tokens
        self.result.epochs = round(self.feed.epochs, 4)

    def _training_deadline(self) -> float:
        """When a trainer that has not answered is overrunning: budget plus grace on the clock, but
        never sooner than a grace after the last validation pass (without a freezer a pass counts as
        training and may use up the budget itself: the trainer, which waited, is not to blame)."""
        return max(self.clock.deadline(self.spec.limits.kill_after_seconds), self.answer_floor)

    def _overrun_reason(self) -> str:
        limits = self.spec.limits
        steps = self.feed.steps if self.feed else 0
        return (f"training ran {self.clock.elapsed:.1f} s on the harness's clock, past the {limits.seconds:g} s "
                f"budget plus {limits.grace:g} s grace; the trainer was last handed step {steps} "
                f"(machine load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")

    def _end_trainer(self) -> None:
        """Training is over: nothing of the trainer may run while the test split is scored."""
        assert self.trainer is not None
        self._sample_resources(self.trainer)
        self.trainer.kill()
        self.phase = "scoring"

    def _validation_pass(self, seq: int, index: int, passes: int) -> dict[str, Any]:
        """Freeze the trainer, score valid from checkpoint `seq`, thaw; the curve point and the info for on_validation."""
        assert self.trainer is not None and self.feed is not None
        cgroup = self.trainer.cgroup
        frozen = bool(cgroup is not None and cgroup.can_freeze and cgroup.freeze())
        if frozen:
            self.clock.pause()
        else:
            self.result.paused_counted = True
        try:
            if not self.scorers:  # started at the first pass, with the trainer frozen: untimed, uncontended
                self._start_scorers()
            self._set_scorers_frozen(False)
            self.phase = "validation"
            deadline = time.monotonic() + self.spec.limits.eval_cap_seconds + self.spec.limits.grace
            began = time.monotonic()
            score = self._score(self.data.valid, "valid", seq, deadline,
                                f"a validation pass took over {self.spec.limits.eval_cap_seconds:.0f} s")
            self.result.pass_seconds.append({"scoring": time.monotonic() - began - self.last_load_seconds,
                                             "load": self.last_load_seconds})
        finally:
            # The scorers run nothing while the trainer does: no work in the background, and no signal
            # from what they saw of valid can reach the trainer through the machine's load.
            self._set_scorers_frozen(True)
            if frozen:
                cgroup.thaw()
                self.clock.resume()
            self.phase = "training"
        point = {"train_seconds": self.clock.elapsed, "steps": self.feed.steps, "tokens": self.feed.tokens,
                 "valid_ppl": score.perplexity}
        self.result.curve.append(point)
        self.on_event({"type": "curve", **point})
        return {"type": "validation", "perplexity": score.perplexity, "pass_index": index, "passes": passes,
                "step": self.feed.steps, "tokens": self.feed.tokens, "train_seconds": self.clock.elapsed,
                "last": index == passes - 1}

    def _charge(self, seconds: float, what: str) -> None:
        """Count scorer work beyond its allowance as training time; past budget plus grace the run ends."""
        if seconds <= 0:
            return
        self.result.charged_seconds += seconds
        self.clock.paused_total -= seconds  # the clock reads `seconds` later, in every state
        limits = self.spec.limits
        if self.clock.elapsed > limits.kill_after_seconds:
            raise RunEnd(RunStatus.TIMEOUT, FailureKind.TIMEOUT,
                         f"{what} took {seconds:.1f} s beyond its allowance; counted as training time, that makes "
                         f"{self.clock.elapsed:.1f} s, past the {limits.seconds:g} s budget plus {limits.grace:g} s grace")

    def _set_scorers_frozen(self, frozen: bool) -> None:
        for scorer in self.scorers:
            if scorer.cgroup is not None and scorer.cgroup.can_freeze and scorer.exit_code is None:
                if frozen:
                    scorer.cgroup.freeze()
                else:
                    scorer.cgroup.thaw()

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self.last_progress < PROGRESS_EVERY_SECONDS or self.feed is None:
            return
        self.last_progress = now
        self.on_event({"type": "progress", "phase": self.phase, "step": self.feed.steps, "epoch": self.feed.epoch,
                       "train_seconds": self.clock.elapsed, "tokens": self.feed.tokens, "loss": self.last_loss})

    # --- Scoring ---------------------------------------------------------------------------------------

    def _final_scoring(self) -> None:
        # Fresh scorers: the ones that served validation passes saw valid and could have kept it; the
        # final scores come from processes that have seen nothing but the final checkpoint.
        for scorer in self.scorers:
            self.result.scorer_peak_memory_bytes = max(self.result.scorer_peak_memory_bytes, scorer.peak)
            scorer.release()
        self.scorers, self.loaded = [], {}
        self._start_scorers()
        self.phase = "scoring"
        self.on_event({"type": "phase", "phase": "scoring"})
        deadline = time.monotonic() + self.spec.limits.scoring_cap_seconds + self.spec.limits.grace
        why = f"final scoring took over {self.spec.limits.scoring_cap_seconds:.0f} s"
        began = time.monotonic()
        valid = self._score(self.data.valid, "valid", self.final_seq, deadline, why)
        test = self._score(self.data.test, "test", self.final_seq, deadline, why)
        self.result.final_scoring_seconds = time.monotonic() - began
        self.result.valid, self.result.test = valid, test
        self.result.train_seconds = self.clock.elapsed  # with any scorer work counted as training
        self.result.param_count = self._parameter_count()
        if isinstance(valid, SplitScore):
            self.result.valid_sentence_nll = sentence_nll(valid.token_nll, self.data.valid, self.data.eos_id)
            self.result.test_sentence_nll = sentence_nll(test.token_nll, self.data.test, self.data.eos_id)
        for batch_size in self.spec.batch_independence:
            self._check_batch_independence(batch_size, valid, deadline, why)
        self.result.checks = {
            "rows_checked": "finite, log-probabilities, normalised (in the supervisor)",
            "nll": "renormalised rows", "causality": "passed" if self.spec.track == "causal" else "not applicable",
            "replay": "passed", "tokens_scored_once": "passed", **self.audits,
        }
        self.result.audits = dict(self.audits)

    def _check_batch_independence(self, batch_size: int, reference: SplitScore | MaskedScore, deadline: float,
                                  why: str) -> None:
        protocol = EvalProtocol(**{**asdict(self.spec.protocol), "batch_size": batch_size})
        other = self._score(self.data.valid, "valid", self.final_seq, deadline, why, protocol)
        if not np.isclose(other.perplexity, reference.perplexity, rtol=1e-4):
            raise RunEnd(RunStatus.INVALID, FailureKind.INVALID_OUTPUT,
                         f"perplexity depends on the scoring batch size ({reference.perplexity:.4f} with "
                         f"{self.spec.protocol.batch_size} segments per batch, {other.perplexity:.4f} with "
                         f"{batch_size}): rows of a batch must not influence each other")

    def _score(self, ids: np.ndarray, split: str, seq: int, deadline: float, why: str,
               protocol: EvalProtocol | None = None) -> SplitScore | MaskedScore:
        began = time.monotonic()
        for lane, scorer in enumerate(self.scorers):
            if self.loaded.get(lane) != seq:
                scorer.channel.send({"type": "load", "seq": seq, "file": f"checkpoint-{seq}.safetensors"})
        load_deadline = min(deadline, began + LOAD_CAP_SECONDS)
        for lane, scorer in enumerate(self.scorers):
            if self.loaded.get(lane) != seq:
                self._wait_seq(scorer, load_deadline, "loaded", seq,
                               f"loading a checkpoint took over {LOAD_CAP_SECONDS:.0f} s (untimed work is capped)")
                self.loaded[lane] = seq
        self.last_load_seconds = time.monotonic() - began
        self._charge(self.last_load_seconds - LOAD_ALLOWANCE_SECONDS, "loading a checkpoint into the scorers")
        plan = ScorePass(split, ids, self.data.eos_id, len(self.data.vocab), protocol or self.spec.protocol,
                         self.context, self.window, self.spec.track, self.mask_id, workers=self.spec.threads)
        in_flight: list[deque[tuple[int, Request, int]]] = [deque(), deque()]
        sent = [0, 0]
        for number, request in enumerate(plan.requests):
            lane = request.lane
            # Never two windows of one stream in flight: a scorer that read ahead on its channel would
            # find the next window's first input, the target of the last position it is scoring.
            # Pipelining goes across streams only (the plan alternates a lane's streams).
            while in_flight[lane] and (len(in_flight[lane]) == SLOTS
                                       or any(flight[1].stream == request.stream for flight in in_flight[lane])):
                self._collect(plan, lane, in_flight[lane].popleft(), deadline, why)
            slot = sent[lane] % SLOTS
            sent[lane] += 1
            self.scorers[lane].channel.send({"type": "log_probs", "id": number, "stream": request.stream,
                                             "fresh": request.fresh,
                                             "shape": list(request.inputs.shape), "slot": slot},
                                            payload_of(request))
            in_flight[lane].append((number, request, slot))
        for lane in range(2):
            while in_flight[lane]:
                self._collect(plan, lane, in_flight[lane].popleft(), deadline, why)
        try:
            score = plan.result()
        except ScoreFailure as failure:
            raise RunEnd(RunStatus.INVALID, failure.kind, failure.reason) from failure
        for key, count in plan.audits.items():
            self.audits[key] += count
        return score

    def _collect(self, plan: ScorePass, lane: int, flight: tuple[int, Request, int], deadline: float,
                 why: str) -> None:
        number, request, slot = flight
        scorer = self.scorers[lane]
        answer = self._wait(scorer, deadline, {"rows"}, why)
        if answer["id"] != number:
            raise RunEnd(RunStatus.FAILED, FailureKind.SANDBOX_VIOLATION,
                         f"the {scorer.name} answered request {answer['id']} when request {number} was due")
        rows, cols = request.inputs.shape
        count = rows * cols * len(self.data.vocab)
        # Copy first, then check the copy: the scorer cannot change what is being checked. The copy
        # goes into one buffer reused for every block (a fresh 40 MB array costs more in page faults).
        source = np.frombuffer(self.shms[lane], dtype=np.float32, count=count, offset=slot * self.slot_bytes)
        block = self.block_buffer[:count]
        np.copyto(block, source)
        del source
        try:
            plan.take(request, torch.from_numpy(block).view(rows, cols, len(self.data.vocab)))
        except ScoreFailure as failure:
            raise RunEnd(RunStatus.INVALID, failure.kind, failure.reason) from failure

    def _parameter_count(self) -> int | None:
        """Values in the final checkpoint, optimiser state excluded, read from its safetensors header
        by the supervisor (through a directory descriptor, never following a link)."""
        header = read_checkpoint_header(self.run_dir / "trainer", f"checkpoint-{self.final_seq}.safetensors")
        if header is None:
            return None
        total = 0
        for key, info in header.items():
            if key == "__metadata__" or key.startswith("optim/") or not isinstance(info, dict):
                continue
            shape = info.get("shape")
            if isinstance(shape, list) and all(isinstance(d, int) and 0 <= d < 2**40 for d in shape):
                total += math.prod(shape)  # exact integers: a header cannot overflow the count
        return total if total < 2**62 else None  # a header claiming more is not a model: no count

    # --- Waiting, and every limit while waiting ----------------------------------------------------------

    def _wait(self, child: SandboxedChild, deadline: float, expected: set[str], why: str | Callable[[], str]) -> dict[str, Any]:
        """The next message from `child`, validated; servicing every other duty meanwhile."""
        while True:
            if child.queue:
                try:
                    message = validate(child.queue.popleft(), frozenset(expected))
                except ProtocolViolation as violation:
                    raise RunEnd(RunStatus.FAILED, violation.kind,
                                 f"the {child.name} broke the harness protocol: it sent {violation.reason}") from violation
                if message["type"] == "failure":
                    kind, reason, trace = child_failure(message)
                    raise RunEnd(kind.status, kind, reason, trace)
                return message
            if child.channel.closed or not child.alive():
                self._child_ended(child)
            if time.monotonic() > deadline:
                reason = why() if callable(why) else why
                status = RunStatus.TIMEOUT
                raise RunEnd(status, FailureKind.TIMEOUT, reason)
            self._service(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def _wait_seq(self, child: SandboxedChild, deadline: float, kind: str, seq: int,
                  why: str | Callable[[], str] | None = None) -> None:
        message = self._wait(child, deadline, {kind}, why or self._overrun_reason)
        if message["seq"] != seq:
            raise RunEnd(RunStatus.FAILED, FailureKind.SANDBOX_VIOLATION,
                         f"the {child.name} sent {kind} for {message['seq']} when {seq} was due")

    def _child_ended(self, child: SandboxedChild) -> None:
        """The awaited child closed its channel or exited without a word."""
        deadline = time.monotonic() + 1.0
        while child.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        closed_while_running = child.alive()  # it hung up on the supervisor but did not end
        child.kill()
        child.pump()
        if child.queue:  # a last failure report may still be queued
            try:
                message = validate(child.queue.popleft(), frozenset({"failure"}))
                kind, reason, trace = child_failure(message)
                raise RunEnd(kind.status, kind, reason, trace)
            except ProtocolViolation:
                pass
        self._check_memory_ended(child)
        code = child.exit_code
        if closed_while_running:
            raise RunEnd(RunStatus.FAILED, FailureKind.SANDBOX_VIOLATION,
                         f"the {child.name} closed its channel to the harness while still running")
        if code == 0:
            raise RunEnd(RunStatus.FAILED, FailureKind.CONTRACT_VIOLATION,
                         f"the {child.name} ended its own process (exit code 0) before it reported a result: "
                         "an entry must not exit")
        if code is not None and code < 0:
            hint = " (SIGKILL: possibly the kernel's out-of-memory killer)" if code == -9 else ""
            reason = f"the {child.name} was killed by signal {-code}{hint} before it reported a result"
        else:
            reason = f"the {child.name} exited with code {code} before it reported a result"
        raise RunEnd(RunStatus.FAILED, FailureKind.RUNTIME_ERROR, reason)

    def _check_memory_ended(self, child: SandboxedChild) -> None:
        limit = self.spec.limits.memory_bytes
        if child.cgroup is not None and child.cgroup.oom_killed():
            raise RunEnd(RunStatus.OUT_OF_MEMORY, FailureKind.OUT_OF_MEMORY,
                         f"memory reached the {format_bytes(limit)} budget in the {child.name}: the kernel's "
                         "memory limit (cgroup) stopped it")
        if child.peak > limit:
            raise RunEnd(RunStatus.OUT_OF_MEMORY, FailureKind.OUT_OF_MEMORY,
                         f"peak memory {format_bytes(child.peak)} of the {child.name} exceeded the "
                         f"{format_bytes(limit)} budget")

    def _service(self, timeout: float) -> None:
        live = [c for c in self.children if not c.released and (c.exit_code is None or not c.channel.closed)]
        sources: list[Any] = [c.channel for c in live if not c.channel.closed] + [c.log_fd for c in live]
        try:
            readable, _, _ = select.select(sources, [], [], timeout)
        except (OSError, ValueError):
            readable = []
        for child in self.children:
            if child.released:
                continue
            if child.channel in readable:
                try:
                    child.pump()
                except ProtocolViolation as violation:
                    raise RunEnd(RunStatus.FAILED, violation.kind,
                                 f"the {child.name} broke the harness protocol: it sent {violation.reason}") from violation
            if child.log_fd in readable:
                child.drain_log()
        self._check_limits()

    def _check_limits(self) -> None:
        now = time.monotonic()
        if now - self.last_limits_check < LIMITS_EVERY_SECONDS:
            return
        self.last_limits_check = now
        if self.cancel is not None and self.cancel.is_set():
            raise RunEnd(RunStatus.INTERRUPTED, FailureKind.INTERRUPTED,
                         "the harness was interrupted while this run was in progress")
        total_log = sum(c.log_bytes for c in self.children)
        if total_log > MAX_LOG_BYTES:
            raise RunEnd(RunStatus.FAILED, FailureKind.SANDBOX_VIOLATION,
                         f"the run printed more than {format_bytes(MAX_LOG_BYTES)} of output")
        for child in self.children:
            if child.exit_code is None and not child.released:
                if child.disk_due():
                    self._sample_resources(child)
                child.check_limits()

    def _sample_resources(self, child: SandboxedChild) -> None:
        if child.cgroup is None or child.exit_code is not None:
            return
        self.result.max_threads = max(self.result.max_threads, child.cgroup.thread_count())
        if child is self.trainer:
            self.result.cpu_seconds = child.cgroup.cpu_seconds()

    # --- The end ---------------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        if self.feed is not None and not self.result.steps:
            self._record_counts()
            self.result.train_seconds = self.clock.elapsed
        for child in self.children:  # the kernel's peaks are read before the cgroups go
            try:
                child.kill()
            except OSError:
                pass
        if self.trainer is not None:
            self.result.peak_memory_bytes = max(self.result.peak_memory_bytes, self.trainer.peak)
        if self.scorers:
            self.result.scorer_peak_memory_bytes = max([self.result.scorer_peak_memory_bytes,
                                                        *(scorer.peak for scorer in self.scorers)])
        for child in self.children:
            try:
                child.release()
            except OSError:
                pass
        self.result.log_tail = self._log_tail()
        self.result.isolation = {**self.confinement.as_dict(),
                                 "memory_enforcement": "cgroup" if all(c.cgroup for c in self.children) and self.children
                                 else "monitor",
                                 "freezer": "cgroup freezer" if not self.result.paused_counted
                                 else "none: validation passes counted as training time",
                                 "note": "; ".join(n for n in [self.confinement.note, *(c.note for c in self.children)] if n),
                                 "cpu_seconds": self.result.cpu_seconds, "max_threads": self.result.max_threads,
                                 "cpus": format_cpus(self.cpus) if self.cpus else "all",
                                 "cpuset": ("cgroup" if self.children and all(c.cgroup and "cpuset" in c.cgroup.controllers
                                                                              for c in self.children)
                                            else "affinity mask only") if self.cpus else "none",
                                 "scorer_peak_memory_bytes": self.result.scorer_peak_memory_bytes,
                                 "scorer_setup_seconds": self.result.scorer_setup_seconds}
        self._close_shared_blocks()
        for name in ("trainer", "scorer0", "scorer1"):  # nothing a run wrote survives it
            remove_tree(self.run_dir / name)

    def _log_tail(self) -> str:
        parts = []
        for child in self.children:
            text = bytes(child.tail).decode("utf-8", errors="replace").strip()
            if text:
                parts.append(f"--- {child.name} ---\n{text}")
        return "\n".join(parts)[-LOG_TAIL_BYTES:]


def read_checkpoint_header(directory: Path, name: str, cap: int = 16 * 2**20) -> dict[str, Any] | None:
    """The JSON header of a safetensors file a child wrote: opened under a directory descriptor with
    O_NOFOLLOW, regular files only, the header size capped. None when it is not a valid header."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        os.close(dir_fd)
        return None
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        head = os.read(fd, 8)
        if len(head) != 8:
            return None
        (size,) = struct.unpack("<Q", head)
        if size > cap:
            return None
        data = b""
        while len(data) < size:
            chunk = os.read(fd, size - len(data))
            if not chunk:
                return None
            data += chunk
        header = json.loads(data)
        return header if isinstance(header, dict) else None
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)
        os.close(dir_fd)
