"""CPU leases (harness.cpus): runs on one machine never share a core, whichever runner started them,
and a runner that dies, however it dies, leaves no CPU taken. Real flocks, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.cpus import CpuPool, format_cpus

HOLDER = """
import sys, time
from pathlib import Path
from harness.cpus import CpuPool
lease = CpuPool(Path(sys.argv[1]), tuple(range(int(sys.argv[2])))).try_acquire(int(sys.argv[3]))
print(",".join(map(str, lease.cpus)) if lease else "none", flush=True)
time.sleep(600)
"""


def hold_in_another_process(folder: Path, cpus: int, count: int) -> tuple[subprocess.Popen[str], str]:
    """Another runner on the machine, holding `count` of `cpus` CPUs until killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(cpus), str(count)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def test_format_cpus() -> None:
    assert format_cpus((0, 1, 2, 3, 6)) == "0-3,6"
    assert format_cpus((5,)) == "5"
    assert format_cpus((0, 2, 4)) == "0,2,4"
    assert format_cpus((1, 0)) == "0-1"
    assert format_cpus(()) == ""


def test_leases_never_overlap_and_are_all_or_nothing(tmp_path: Path) -> None:
    first, second = CpuPool(tmp_path, (0, 1, 2, 3)), CpuPool(tmp_path, (0, 1, 2, 3))  # two runners
    a = first.try_acquire(3)
    assert a is not None and len(a.cpus) == 3
    b = second.try_acquire(2)
    assert b is None  # one CPU is free, two are asked: nothing is taken
    c = second.try_acquire(1)
    assert c is not None and set(c.cpus).isdisjoint(a.cpus)
    assert first.try_acquire(1) is None  # the same pool's threads are held apart too
    a.release()
    d = first.try_acquire(3)
    assert d is not None and set(d.cpus).isdisjoint(c.cpus)
    c.release()
    d.release()


def test_a_process_holding_cpus_keeps_them_from_this_one_until_it_dies(tmp_path: Path) -> None:
    holder, held = hold_in_another_process(tmp_path, 2, 2)
    try:
        assert held == "0,1"
        pool = CpuPool(tmp_path, (0, 1))
        assert pool.try_acquire(1) is None
        holder.send_signal(signal.SIGKILL)  # a crashed runner: the kernel drops its locks
        holder.wait(timeout=10)
        lease = pool.try_acquire(2)
        assert lease is not None and lease.cpus == (0, 1)
        lease.release()
    finally:
        holder.kill()
        holder.wait()


def test_acquire_waits_for_the_cpus_and_gives_up_when_cancelled(tmp_path: Path) -> None:
    pool = CpuPool(tmp_path, (0, 1))
    taken = pool.try_acquire(2)
    assert taken is not None
    waited: list[bool] = []
    got: list[object] = []
    worker = threading.Thread(target=lambda: got.append(pool.acquire(1, on_wait=lambda: waited.append(True))))
    worker.start()
    time.sleep(1.0)
    assert worker.is_alive() and waited == [True]  # told once that it waits
    taken.release()
    worker.join(timeout=10)
    lease = got[0]
    assert lease is not None and lease.waited_seconds >= 0.9  # type: ignore[attr-defined]
    lease.release()  # type: ignore[attr-defined]

    taken = pool.try_acquire(2)
    stop = threading.Event()
    threading.Timer(0.6, stop.set).start()
    assert pool.acquire(1, stop.is_set) is None
    taken.release()  # type: ignore[union-attr]


def test_a_lease_asks_for_at_most_the_machine_and_its_locks_are_not_inherited(tmp_path: Path) -> None:
    pool = CpuPool(tmp_path, (0, 1))
    assert pool.size(8) == 2 and pool.size(1) == 1
    with pool.acquire(8) as lease:  # type: ignore[union-attr]
        assert lease.cpus == (0, 1)
        # A process started meanwhile (a sandboxed child) holds no lock: descriptors are close-on-exec.
        child = subprocess.run(["ls", "-l", "/proc/self/fd"], capture_output=True, text=True, check=True)
        assert "cpu0.lock" not in child.stdout and "cpu1.lock" not in child.stdout
    again = pool.try_acquire(2)
    assert again is not None
    again.release()


def test_the_lock_folder_must_be_a_folder(tmp_path: Path) -> None:
    from harness.errors import ConfigError

    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "locks"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="not a folder"):
        CpuPool(link, (0,))
    assert os.listdir(target) == []
