"""Disjoint CPU sets for the runs on one machine, whoever started them.

Two `harness run` processes on one machine (two organisers' terminals, `--jobs N`, two Ray nodes on
one host) must not share cores: a run slowed by its neighbour is timed on its neighbour's load. Every
run therefore holds a *lease* on `threads` CPUs before it starts, and its sandboxed processes are
confined to them (a cpuset cgroup where the machine has one, the affinity mask as well).

A lease is one `flock` per CPU on a lock file in a machine-wide folder (`HARNESS_LOCK_DIR`, default
`/run/lock/ptb-harness`, else a folder in the system's temporary directory). Why flock: the kernel
drops a lock when its holder dies, however it dies, so a crashed runner never leaves CPUs taken, and
no daemon or database is needed to coordinate. Leases are all or nothing: a runner that cannot have
every CPU it needs takes none and waits, so two runners never hold half a set each for ever.
Participant code cannot reach the folder: it lives on the host, outside every sandbox.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import ConfigError

LOCK_DIR_ENV = "HARNESS_LOCK_DIR"
POLL_SECONDS = 0.5


def lock_dir() -> Path:
    """The machine-wide folder of CPU locks (made on first use, owner-only, never a link)."""
    configured = os.environ.get(LOCK_DIR_ENV)
    if configured:
        return Path(configured)
    run_lock = Path("/run/lock")
    if run_lock.is_dir() and os.access(run_lock, os.W_OK):
        return run_lock / "ptb-harness"
    return Path(tempfile.gettempdir()) / f"ptb-harness-locks-{os.getuid()}"


def machine_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on (a container's or a cpuset's share, not the whole machine)."""
    return tuple(sorted(os.sched_getaffinity(0)))


def format_cpus(cpus: tuple[int, ...]) -> str:
    """`0-3,6` for (0, 1, 2, 3, 6): the form cpuset.cpus and taskset read."""
    parts: list[str] = []
    start = previous = None
    for cpu in sorted(cpus):
        if previous is not None and cpu == previous + 1:
            previous = cpu
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = cpu
    if start is not None:
        parts.append(str(start) if start == previous else f"{start}-{previous}")
    return ",".join(parts)


@dataclass
class CpuLease:
    """CPUs held for one run until `release` (or until this process dies)."""

    cpus: tuple[int, ...]
    waited_seconds: float = 0.0
    _fds: list[int] = field(default_factory=list, repr=False)

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)  # closing the descriptor drops its flock
        self._fds.clear()

    def __enter__(self) -> CpuLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class CpuPool:
    """Hands out leases on this machine's CPUs; every pool on the machine shares the same locks."""

    def __init__(self, folder: Path | None = None, cpus: tuple[int, ...] | None = None) -> None:
        self.folder = folder or lock_dir()
        self.cpus = cpus if cpus is not None else machine_cpus()
        self._guard = threading.Lock()  # one process's threads try sets one at a time
        self._open_folder()

    def _open_folder(self) -> None:
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = os.lstat(self.folder)
        except OSError as exc:
            raise ConfigError(f"cannot use {self.folder} for CPU locks ({exc.strerror}); set {LOCK_DIR_ENV} "
                              "to a folder every runner on this machine can write") from exc
        if not stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"{self.folder} (CPU locks) is not a folder; set {LOCK_DIR_ENV}")

    def size(self, threads: int) -> int:
        """CPUs a run of `threads` threads gets: its threads, at most every CPU here."""
        return max(1, min(threads, len(self.cpus)))

    def try_acquire(self, count: int) -> CpuLease | None:
        """`count` free CPUs now, or None (nothing held)."""
        with self._guard:
            held: list[tuple[int, int]] = []
            for cpu in self.cpus:
                fd = self._lock_file(cpu)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    continue
                held.append((cpu, fd))
                if len(held) == count:
                    return CpuLease(tuple(c for c, _ in held), _fds=[fd for _, fd in held])
            for _, fd in held:  # not enough: all or nothing
                os.close(fd)
            return None

    def acquire(self, threads: int, cancelled: Callable[[], bool] = lambda: False,
                on_wait: Callable[[], None] | None = None) -> CpuLease | None:
        """Block until the run's CPUs are free (None if `cancelled()` turns true meanwhile)."""
        count = self.size(threads)
        start = time.monotonic()
        told = False
        while not cancelled():
            lease = self.try_acquire(count)
            if lease is not None:
                lease.waited_seconds = time.monotonic() - start
                return lease
            if not told and on_wait is not None:
                on_wait()
                told = True
            time.sleep(POLL_SECONDS)
        return None

    def _lock_file(self, cpu: int) -> int:
        path = self.folder / f"cpu{cpu}.lock"
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot open the CPU lock {path} ({exc.strerror}); set {LOCK_DIR_ENV}") from exc
