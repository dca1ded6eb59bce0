"""Executors: where the `execute_run` calls of a `harness run` happen.

The driver (harness.supervisor) alone claims runs and writes the database; an executor only places
`execute_run(spec, data, ...)` calls and hands back their `RunResult`s, with the node each ran on.

- `LocalExecutor` (the default): runs on this machine, one after another or `--jobs N` at once, each
  on its own CPUs.
- `RayExecutor`: each run is one Ray task on a cluster (`--executor ray --ray-address ADDR`). The
  task asks for the run's threads as `num_cpus`, one GPU on a CUDA division, the memory budget as
  `memory`, and the custom resource `division:NAME`, so a division's runs land only on nodes that
  declare it (`ray start --resources '{"division:cpu": 4}'`: four runs of that division at once).
  The token ids are put once in the object store; the node re-checks their digest, resolves its
  own sandbox, runs in a temporary directory and streams back its placement, its phases and then
  the result.
"""

from __future__ import annotations

import hashlib
import os
import queue
import socket
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from harness.cpus import CpuPool, format_cpus
from harness.errors import ConfigError, DataError, FailureKind, RunStatus
from harness.execution import RunData, RunResult, RunSpec, execute_run, lean_supervisor
from harness.provenance import cpu_model, hardware_fingerprint
from harness.sandbox import Confinement, resolve_confinement

EventSink = Callable[[dict[str, Any]], None]
EXECUTORS = ("local", "ray")
PROGRESS_EVERY_SECONDS = 1.0
"""A placed run streams at most one progress event a second (phase changes and curve points always)."""
CAPACITY_SECONDS = 5.0
CANCEL_WAIT_SECONDS = 30.0
"""How long Ctrl-C waits for a local run to stop its processes (it checks every fraction of a second)."""
NODE_WAIT_SECONDS = 600.0
"""How long runs of a division wait for a node declaring it to be alive again (HARNESS_RAY_NODE_WAIT):
a replacement node may take minutes to start, but Ray would hold the runs for ever."""


@dataclass
class Job:
    """One claimed run handed to an executor."""

    run_id: int
    spec: RunSpec
    division: str
    on_event: EventSink
    attempt: int = 1
    node: str | None = None
    """Set once the run is known to have started somewhere."""


@dataclass
class Finished:
    job: Job
    result: RunResult
    node: str | None = None
    node_lost: bool = False
    """The node died under the run: `result` is `interrupted`, and the run may be retried."""
    environment: dict[str, Any] = field(default_factory=dict)
    """What the node says of itself (hardware), merged into the run's recorded environment."""


class Executor(ABC):
    """Places runs: `submit` claimed jobs, then take them back with `next_finished` one by one."""

    name = "executor"

    @abstractmethod
    def start(self, data: RunData) -> None:
        """Make `data` available wherever runs will execute (called once, before any submit)."""

    @abstractmethod
    def capacity(self, division: str, device: str, threads: int) -> int:
        """How many runs of this shape to have out at once (more would only queue)."""

    @abstractmethod
    def submit(self, job: Job) -> None: ...

    @abstractmethod
    def next_finished(self) -> Finished:
        """Block until a submitted run ends; its events are passed to the job's sink meanwhile."""

    @abstractmethod
    def cancel_all(self) -> list[Job]:
        """Stop every run still out (force) and return their jobs, for the driver to record."""

    def finished_meanwhile(self) -> list[Finished]:
        """Runs that ended with a result while `cancel_all` stopped the others (recorded as they ended)."""
        return []

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        return None


class LocalExecutor(Executor):
    """Runs on this machine, up to `jobs` at once (`harness run --jobs N`), each on its own lease of
    CPUs (harness.cpus): neither this driver's runs nor another runner's on the same machine share a
    core. Each run executes in a worker thread; its events and its end come back to the driver's
    thread through one queue, so the driver alone writes the database and the terminal."""

    name = "local"

    def __init__(self, confinement: Confinement, runs_dir: Path, jobs: int = 1, pool: CpuPool | None = None) -> None:
        if jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {jobs}")
        self.confinement, self.runs_dir, self.jobs = confinement, runs_dir, jobs
        self.pool = pool
        self.inbox: queue.Queue[tuple[Job, dict[str, Any]] | Finished] = queue.Queue()
        self.out: dict[int, tuple[Job, threading.Thread, threading.Event]] = {}
        self.late: list[Finished] = []
        self.data: RunData | None = None

    def start(self, data: RunData) -> None:
        self.data = data
        if self.pool is None:
            self.pool = CpuPool()

    def capacity(self, division: str, device: str, threads: int) -> int:
        """Runs to claim at once: --jobs, at most as many as fit side by side on this machine's CPUs
        (a claimed run should be able to start: another driver may take the next one)."""
        assert self.pool is not None, "start() first"
        return max(1, min(self.jobs, len(self.pool.cpus) // self.pool.size(threads)))

    def submit(self, job: Job) -> None:
        cancel = threading.Event()
        thread = threading.Thread(target=self._work, args=(job, cancel), name=f"run-{job.run_id}", daemon=True)
        self.out[job.run_id] = (job, thread, cancel)
        thread.start()

    def _work(self, job: Job, cancel: threading.Event) -> None:
        """The worker thread: wait for the run's CPUs, execute it, hand back the result (never raises)."""
        assert self.data is not None and self.pool is not None
        node = socket.gethostname()
        post = self.inbox.put
        try:
            lease = self.pool.acquire(job.spec.threads, cancel.is_set, on_wait=lambda: post(
                (job, {"type": "waiting_cpus", "threads": job.spec.threads})))
            if lease is None:
                result = _interrupted("the harness was interrupted while this run waited for CPUs")
            else:
                with lease:
                    post((job, {"type": "placed", "node": node, "cpus": format_cpus(lease.cpus),
                                "waited_seconds": round(lease.waited_seconds, 1)}))
                    result = execute_run(job.spec, self.data, self.confinement, self.runs_dir / str(job.run_id),
                                         lambda event: post((job, event)), lease.cpus, cancel)
        except Exception as exc:  # noqa: BLE001 - a fault of the harness fails this run, recorded
            result = RunResult(RunStatus.FAILED, FailureKind.HARNESS_ERROR,
                               f"the harness failed before the run started: {type(exc).__name__}: {exc}")
        post(Finished(job, result, node))

    def next_finished(self) -> Finished:
        while True:
            item = self.inbox.get()
            if isinstance(item, Finished):
                _, thread, _ = self.out.pop(item.job.run_id)
                thread.join()
                return item
            job, event = item
            if event.get("type") == "placed":
                job.node = event["node"]
            job.on_event(event)

    def cancel_all(self) -> list[Job]:
        """Tell every run still out to stop and wait for them: their processes are killed and their
        cgroups and work folders go before the driver records them `interrupted`."""
        jobs = [job for job, _, _ in self.out.values()]
        for _, _, cancel in self.out.values():
            cancel.set()
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS  # for all of them together, not each in turn
        for _, thread, _ in self.out.values():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.out.clear()
        self.late = []
        while not self.inbox.empty():  # a run that ended (ok, or stopped) keeps its own result
            item = self.inbox.get_nowait()
            if isinstance(item, Finished):
                self.late.append(item)
        ended = {done.job.run_id for done in self.late}
        return [job for job in jobs if job.run_id not in ended]

    def finished_meanwhile(self) -> list[Finished]:
        return self.late


def data_digest(data: RunData) -> str:
    """SHA-256 over the vocabulary and the three int32 splits exactly as a run receives them.

    RunData.checksums are of the text files; a node has only the arrays, so this digest is what
    it re-checks before any run uses them.
    """
    digest = hashlib.sha256()
    digest.update("\n".join(data.vocab).encode("utf-8"))
    digest.update(str(data.eos_id).encode())
    for split in (data.train, data.valid, data.test):
        array = np.ascontiguousarray(split, dtype="<i4")
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def node_label() -> str:
    """This Ray node as a run records it: host name and Ray node id (hosts may hold several nodes);
    the host name alone outside a Ray worker."""
    import ray

    if not ray.is_initialized():
        return socket.gethostname()
    return f"{socket.gethostname()} (ray node {ray.get_runtime_context().get_node_id()[:12]})"


def _run_on_node(spec: RunSpec, data: RunData, digest: str, sandbox: str) -> Iterator[dict[str, Any]]:
    """The body of a Ray task (a streaming generator): placement, then events, then the result."""
    node = node_label()
    hardware = hardware_fingerprint(spec.device, spec.threads)
    yield {"type": "placed", "node": node, "hardware": hardware}
    if data_digest(data) != digest:
        raise DataError(f"the token ids received on {node} do not match the driver's digest {digest[:12]}: "
                        "the object store delivered different data")
    lean_supervisor()
    # Arrays from the object store are read-only views of shared memory: the run gets its own copy.
    local = replace(data, train=np.array(data.train), valid=np.array(data.valid), test=np.array(data.test))
    confinement = resolve_confinement(sandbox)
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    box: dict[str, Any] = {}

    def work(folder: Path) -> None:
        try:  # nodes sharing a host (a loopback cluster) take disjoint CPUs, as local runners do
            lease = CpuPool().acquire(spec.threads)
            if lease is None:  # only a cancelled wait gives none, and this one is never cancelled
                raise RuntimeError("no CPU lease")
            with lease:
                events.put({"type": "cpus", "cpus": format_cpus(lease.cpus)})  # also in the run's isolation
                box["result"] = execute_run(spec, local, confinement, folder / "run", events.put, lease.cpus)
        except BaseException as exc:  # noqa: BLE001 - a harness failure is raised again in the task
            box["error"] = exc

    with tempfile.TemporaryDirectory(prefix="ptb-harness-ray-") as folder:
        thread = threading.Thread(target=work, args=(Path(folder),), name="execute_run", daemon=True)
        thread.start()
        last_progress = 0.0
        while thread.is_alive() or not events.empty():
            try:
                event = events.get(timeout=0.2)
            except queue.Empty:
                continue
            if event.get("type") == "progress":
                if time.monotonic() - last_progress < PROGRESS_EVERY_SECONDS:
                    continue
                last_progress = time.monotonic()
            yield event
        thread.join()
    if "error" in box:
        raise box["error"]
    yield {"type": "result", "result": box["result"], "node": node,
           "environment": {"node": node, "node_hardware": hardware, "node_cpu": cpu_model(),
                           "node_sandbox": confinement.sandbox}}


class RayExecutor(Executor):
    """Each run one Ray task on the cluster at `address` (None: RAY_ADDRESS, else a local cluster)."""

    name = "ray"

    def __init__(self, address: str | None, sandbox: str) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ConfigError("--executor ray needs Ray: install it with pip install -e '.[ray]'") from exc
        self.ray = ray
        self.address = address
        self.sandbox = "none" if sandbox == "none" else "bwrap"
        """A node runs participant code in bubblewrap unless the driver was told --sandbox none."""
        self.out: dict[Any, Job] = {}
        self.data_ref: Any = None
        self.digest = ""
        self.remote = ray.remote(_run_on_node)
        self._capacity: dict[tuple[str, str, int], tuple[int, float]] = {}
        self._seen: set[str] = set()
        """Division resources some node declared during this run: their loss is waited out (up to the
        node wait), not an error."""
        self._gone_since: dict[str, float] = {}
        self._last_node_check = 0.0
        self.node_wait = _node_wait()

    def start(self, data: RunData) -> None:
        try:
            self.ray.init(address=self.address, logging_level="ERROR", log_to_driver=False,
                          configure_logging=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot connect to the Ray cluster at {self.address or 'RAY_ADDRESS/auto'}: {exc}") from exc
        self.digest = data_digest(data)
        self.data_ref = self.ray.put(data)

    def describe(self) -> str:
        context = self.ray.get_runtime_context()
        return f"ray cluster {context.gcs_address} ({len(self._alive_nodes())} node(s))"

    def _alive_nodes(self) -> list[dict[str, Any]]:
        return [node for node in self.ray.nodes() if node.get("Alive")]

    def capacity(self, division: str, device: str, threads: int) -> int:
        """Runs the live nodes can hold at once: per node, the fewest of its division slots, its CPUs
        over the run's threads and (CUDA) its GPUs. No node declaring the division is an error: Ray
        would queue those runs for ever. Asked again at most every few seconds (nodes come and go)."""
        key = (division, device, threads)
        cached = self._capacity.get(key)
        if cached is not None and time.monotonic() - cached[1] < CAPACITY_SECONDS:
            return cached[0]
        total = self._count_slots(division, device, threads)
        self._capacity[key] = (total, time.monotonic())
        return total

    def _count_slots(self, division: str, device: str, threads: int) -> int:
        resource = f"division:{division}"
        total = 0
        declared = False
        for node in self._alive_nodes():
            have = node.get("Resources", {})
            if have.get(resource, 0) <= 0:
                continue
            declared = True
            slots = min(int(have[resource]), int(have.get("CPU", 0) // max(1, threads)))
            if device == "cuda":
                slots = min(slots, int(have.get("GPU", 0)))
            total += max(0, slots)
        if not declared and resource in self._seen:
            return 1  # its nodes are gone for now (died, being replaced): Ray holds the run until one is back
        if not declared:
            raise ConfigError(f"no node of the Ray cluster declares the resource {resource!r}: start the nodes of "
                              f"division {division!r} with ray start --resources '{{\"{resource}\": SLOTS}}'")
        self._seen.add(resource)
        if total == 0:
            raise ConfigError(f"no node declaring {resource!r} has {threads} CPU(s)"
                              + (" and a GPU" if device == "cuda" else "") + " for one run; lower --threads")
        return total

    def submit(self, job: Job) -> None:
        spec = job.spec
        options = {"num_cpus": spec.threads, "num_gpus": 1 if spec.device == "cuda" else 0,
                   "memory": spec.limits.memory_bytes, "resources": {f"division:{job.division}": 1},
                   "max_retries": 0, "num_returns": "streaming"}
        generator = self.remote.options(**options).remote(spec, self.data_ref, self.digest, self.sandbox)
        self.out[generator] = job

    def next_finished(self) -> Finished:
        while True:
            ready, _ = self.ray.wait(list(self.out), num_returns=1, timeout=1.0)
            for generator in ready:
                finished = self._advance(generator)
                if finished is not None:
                    return finished
            stranded = self._stranded()
            if stranded is not None:
                return stranded

    def _stranded(self) -> Finished | None:
        """A run whose division has had no live node for longer than the node wait: its task is
        cancelled and it ends `interrupted`, saying so, rather than waiting for ever."""
        now = time.monotonic()
        if now - self._last_node_check < CAPACITY_SECONDS:
            return None
        self._last_node_check = now
        alive = {resource for node in self._alive_nodes() for resource, amount in node.get("Resources", {}).items()
                 if resource.startswith("division:") and amount > 0}
        for generator, job in list(self.out.items()):
            resource = f"division:{job.division}"
            if resource in alive:
                self._gone_since.pop(resource, None)
                continue
            gone = now - self._gone_since.setdefault(resource, now)
            if gone >= self.node_wait:
                del self.out[generator]
                try:
                    self.ray.cancel(generator, force=True)
                except Exception:  # noqa: BLE001 - a task already gone is as good as cancelled
                    pass
                return Finished(job, _interrupted(
                    f"no live node of the Ray cluster has declared {resource!r} for {gone:.0f} s (the node wait, "
                    "HARNESS_RAY_NODE_WAIT); start one with ray start --resources and run again"), job.node)
        return None

    def _advance(self, generator: Any) -> Finished | None:
        """Take one item of a run's stream: an event (forwarded), the result, or the task's failure."""
        job = self.out[generator]
        errors = self.ray.exceptions
        try:
            item = self.ray.get(next(generator))
        except StopIteration:
            del self.out[generator]
            return Finished(job, RunResult(RunStatus.FAILED, FailureKind.HARNESS_ERROR,
                                           "the Ray task ended without a result"), job.node)
        except errors.TaskCancelledError:
            del self.out[generator]
            return Finished(job, _interrupted("the run's Ray task was cancelled"), job.node)
        except errors.RayTaskError as exc:  # the harness on the node raised (data digest, no sandbox...)
            del self.out[generator]
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            where = f" on {job.node}" if job.node else ""
            return Finished(job, RunResult(RunStatus.FAILED, FailureKind.HARNESS_ERROR,
                                           f"the harness failed{where}: {type(cause).__name__}: {cause}"), job.node)
        except errors.RayError as exc:  # the worker or its node died, or the object was lost with it
            del self.out[generator]
            where = job.node or "its node (it died before reporting which)"
            reason = f"the node running it, {where}, died mid-run ({type(exc).__name__})"
            return Finished(job, _interrupted(reason), job.node, node_lost=True)
        kind = item.get("type")
        if kind == "result":
            del self.out[generator]
            return Finished(job, item["result"], item["node"], environment=item["environment"])
        if kind == "placed":
            job.node = item["node"]
        job.on_event(item)
        return None

    def cancel_all(self) -> list[Job]:
        jobs = list(self.out.values())
        for generator in list(self.out):
            try:
                self.ray.cancel(generator, force=True)
            except Exception:  # noqa: BLE001 - a task already gone is as good as cancelled
                pass
        self.out.clear()
        return jobs

    def close(self) -> None:
        if self.ray.is_initialized():
            self.ray.shutdown()


def _node_wait() -> float:
    text = os.environ.get("HARNESS_RAY_NODE_WAIT", "")
    try:
        seconds = float(text) if text else NODE_WAIT_SECONDS
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"HARNESS_RAY_NODE_WAIT must be a positive number of seconds, got {text!r}")
    return seconds


def _interrupted(reason: str) -> RunResult:
    return RunResult(RunStatus.INTERRUPTED, FailureKind.INTERRUPTED, reason)


def make_executor(name: str, confinement: Confinement, runs_dir: Path, ray_address: str | None,
                  sandbox: str, jobs: int = 1) -> Executor:
    if name == "local":
        return LocalExecutor(confinement, runs_dir, jobs)
    if name == "ray":
        if jobs != 1:
            raise ConfigError("--jobs is for the local executor: on Ray, the nodes' declared division slots "
                              "and CPUs decide how many runs go at once")
        return RayExecutor(ray_address, sandbox)
    raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
