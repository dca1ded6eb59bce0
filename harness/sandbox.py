"""Isolation for a run's child process: bubblewrap where Linux allows it, cgroup limits where the
machine allows them, and resource limits always.

With `bwrap` the child sees a read-only system, its own /tmp, its own run directory (the only
place it can write), no network, no other processes, and none of: the PTB files, the harness's
caches, the results database, other runs. It runs as an unprivileged user in its own user
namespace with every capability dropped and no way to make further namespaces, so it can neither
remount nor unmount what hides those paths. The harness often runs as root; that matters.

A cgroup (v2, or v1's memory and pids controllers) gives a hard memory ceiling from the kernel
and a cap on processes; without one the supervisor's own measurement still enforces the budget.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import ConfigError

SANDBOX_MODES = ("auto", "bwrap", "none")
MAX_FILE_BYTES = 256 * 2**20  # no file the child writes may grow past this (RLIMIT_FSIZE)
MAX_PROCESSES = 256           # pids.max of the run's cgroup (threads count)
NOBODY = 65534
# Variables the sandboxed child keeps; everything else (paths to data, caches, tokens) is dropped.
KEPT_ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
                    "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "PYTHONPATH")


@dataclass(frozen=True)
class Isolation:
    """What a run actually got; recorded with it."""

    sandbox: str
    """`bwrap` or `none`."""
    memory: str
    """`cgroup` (the kernel enforces the memory budget) or `monitor` (the supervisor does)."""
    note: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"sandbox": self.sandbox, "memory_enforcement": self.memory, "note": self.note}


def bwrap_problem() -> str | None:
    """Why bwrap cannot isolate a run on this machine, or None when it can."""
    binary = shutil.which("bwrap")
    if binary is None:
        return "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    probe = [binary, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all", "--unshare-user",
             "--die-with-parent", "--cap-drop", "ALL", "--uid", str(NOBODY), "--gid", str(NOBODY),
             "--disable-userns", "--", "/bin/true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not start: {exc}"
    if done.returncode != 0:
        return f"bwrap cannot create namespaces here: {done.stderr.strip() or done.returncode}"
    return None


def resolve_mode(mode: str) -> tuple[str, str]:
    """`auto` -> bwrap when it works, else none; returns (mode, note for the user)."""
    if mode not in SANDBOX_MODES:
        raise ConfigError(f"--sandbox must be one of {', '.join(SANDBOX_MODES)}, got {mode!r}")
    if mode == "none":
        return "none", "sandbox disabled (--sandbox none): runs are isolated by process only"
    problem = bwrap_problem()
    if problem is None:
        return "bwrap", ""
    if mode == "bwrap":
        raise ConfigError(f"--sandbox bwrap was asked for, but {problem}")
    return "none", f"no sandbox: {problem}; runs are isolated by process only"


@dataclass(frozen=True)
class SandboxSpec:
    """What one sandboxed child may see."""

    run_dir: Path
    readable: Sequence[Path] = ()
    """Files or folders under hidden paths the child must still read (its data file)."""
    hidden: Sequence[Path] = ()
    """Folders and files the child must not see at all."""
    environment: dict[str, str] = field(default_factory=dict)


def bwrap_command(command: Sequence[str], spec: SandboxSpec) -> list[str]:
    args = [shutil.which("bwrap") or "bwrap",
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL",
            "--uid", str(NOBODY), "--gid", str(NOBODY), "--die-with-parent", "--new-session", "--clearenv"]
    for path in spec.readable:  # first: what lies under /tmp (a fresh tmpfs here) but is needed
        if path.exists():
            args += ["--ro-bind", str(path), str(path)]
    for path in _outermost(spec.hidden):  # then hide, on top of anything bound above
        if path.is_dir():
            args += ["--tmpfs", str(path)]
        elif path.exists():
            args += ["--ro-bind", "/dev/null", str(path)]
    args += ["--bind", str(spec.run_dir), str(spec.run_dir), "--chdir", str(spec.run_dir)]
    for key, value in sorted(spec.environment.items()):
        args += ["--setenv", key, value]
    return args + ["--", *command]


def _outermost(paths: Sequence[Path]) -> list[Path]:
    """Resolved paths, without those inside another hidden folder (mount order matters)."""
    resolved = sorted({p.resolve() for p in paths}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in resolved:
        if not any(path.is_relative_to(parent) for parent in kept if parent.is_dir()):
            kept.append(path)
    return kept


def sandbox_environment(environment: dict[str, str]) -> dict[str, str]:
    kept = {k: v for k, v in environment.items() if k in KEPT_ENVIRONMENT}
    return {**kept, **{k: v for k, v in environment.items() if k.startswith(("OMP_", "MKL_", "PYTHON", "HF_"))},
            "HOME": "/tmp"}


class Cgroup:
    """A per-run cgroup with a memory ceiling and a process cap (v2, or v1 memory + pids)."""

    def __init__(self, paths: dict[str, Path], version: int) -> None:
        self.paths = paths
        self.version = version

    @classmethod
    def create(cls, name: str, memory_bytes: int) -> tuple[Cgroup | None, str]:
        """The cgroup, or None and why not."""
        try:
            group = cls._make(name)
            group._limit(memory_bytes)
            return group, ""
        except (OSError, ValueError) as exc:
            return None, f"no cgroup memory limit ({exc}); the supervisor's measurement enforces the budget"

    @classmethod
    def _make(cls, name: str) -> Cgroup:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        entries = {}
        for line in lines:
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                entries[controller] = path
        if "memory" in entries and Path("/sys/fs/cgroup/memory").is_dir():
            paths = {c: Path(f"/sys/fs/cgroup/{c}{entries[c]}") / name for c in ("memory", "pids") if c in entries}
            for path in paths.values():
                path.mkdir(exist_ok=True)
            return cls(paths, 1)
        if "" in entries:
            root = Path("/sys/fs/cgroup" + entries[""])
            if "memory" not in (root / "cgroup.subtree_control").read_text().split():
                raise ValueError(f"the memory controller is not enabled for children of {root}")
            path = root / name
            path.mkdir(exist_ok=True)
            return cls({"memory": path, "pids": path}, 2)
        raise ValueError("no memory controller in /proc/self/cgroup")

    def _limit(self, memory_bytes: int) -> None:
        if self.version == 1:
            (self.paths["memory"] / "memory.limit_in_bytes").write_text(str(memory_bytes))
            swap = self.paths["memory"] / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(str(memory_bytes))
            if "pids" in self.paths:
                (self.paths["pids"] / "pids.max").write_text(str(MAX_PROCESSES))
        else:
            (self.paths["memory"] / "memory.max").write_text(str(memory_bytes))
            (self.paths["memory"] / "memory.swap.max").write_text("0")
            (self.paths["pids"] / "pids.max").write_text(str(MAX_PROCESSES))

    def join(self) -> None:
        """Move the calling process in (used between fork and exec, so nothing escapes it)."""
        for path in {p for p in self.paths.values()}:
            (path / "cgroup.procs").write_text(str(os.getpid()))

    def peak_bytes(self) -> int:
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int((self.paths["memory"] / name).read_text())
        except (OSError, ValueError):
            return 0

    def oom_killed(self) -> bool:
        try:
            if self.version == 1:
                text = (self.paths["memory"] / "memory.oom_control").read_text()
                return any(line.startswith("oom_kill ") and int(line.split()[1]) > 0 for line in text.splitlines())
            text = (self.paths["memory"] / "memory.events").read_text()
            return any(line.startswith("oom_kill ") and int(line.split()[1]) > 0 for line in text.splitlines())
        except (OSError, ValueError):
            return False

    def kill_all(self) -> None:
        for path in {p for p in self.paths.values()}:
            try:
                for pid in (path / "cgroup.procs").read_text().split():
                    try:
                        os.kill(int(pid), 9)
                    except ProcessLookupError:
                        continue
            except OSError:
                continue

    def remove(self) -> None:
        """Delete the cgroup once its last (killed) process is gone; give the kernel a moment."""
        for path in {p for p in self.paths.values()}:
            for _ in range(20):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


def child_preexec(cgroup: Cgroup | None) -> Callable[[], None]:
    """Runs in the child between fork and exec: file-size and core limits, then the cgroup."""

    def prepare() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if cgroup is not None:
            cgroup.join()

    return prepare
