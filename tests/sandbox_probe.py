"""Run inside the sandbox by tests/test_sandbox.py (`python -I sandbox_probe.py MODE ...`): tries
what a hostile entry would, and prints one JSON line of what happened. Standard library only."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import importlib.util
import json
import os
import socket
import sys
import sysconfig
import threading
import time

LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
MS_RDONLY, MS_REMOUNT, MS_BIND, MNT_DETACH = 1, 32, 4096, 2
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000


def attempt(action) -> str:
    try:
        action()
    except Exception as exc:  # the outcome is the point: report it, whatever it is
        return f"failed: {type(exc).__name__}: {exc}"
    return "succeeded"


def syscall(value: int) -> None:
    if value != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def write(path: str, size: int = 1) -> None:
    with open(path, "wb") as handle:
        handle.write(b"x" * size)


def fill(path: str, size: int) -> str:
    """Write `size` bytes in chunks; the errno name where it stops, or `fit`."""
    try:
        with open(path, "wb") as handle:
            for _ in range(0, size, 1 << 20):
                handle.write(b"x" * (1 << 20))
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    finally:
        if os.path.exists(path):
            os.remove(path)
    return "fit"


def attempts(work_dir: str, hidden: str, secret: str, port: str, tmp_bytes: str) -> dict:
    site = sysconfig.get_paths()["purelib"]
    stdlib = sysconfig.get_paths()["stdlib"]
    harness = importlib.util.find_spec("harness")  # absent where the interpreter lacks it
    harness_dir = list(harness.submodule_search_locations)[0] if harness else stdlib
    results = {
        "uid": os.getuid(),
        "tmp": sorted(os.listdir("/tmp")),
        "shm": sorted(os.listdir("/dev/shm")),
        "root": sorted(os.listdir("/root")) if os.path.isdir("/root") else None,
        "processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "interfaces": sorted(name for _, name in socket.if_nameindex()),
        "mounts": open("/proc/self/mountinfo").read(),
        "read /etc/shadow": attempt(lambda: open("/etc/shadow").read(1)),
        "read /root/.bashrc": attempt(lambda: open("/root/.bashrc").read(1)),
        "read a root-only file": attempt(lambda: open(secret).read(1)),
        "read ptb.test.txt": attempt(lambda: open(os.path.join(hidden, "ptb.test.txt")).read(1)),
        "write the work dir": attempt(lambda: write(os.path.join(work_dir, "owned.txt"))),
        "write /tmp": attempt(lambda: write("/tmp/marker")),
        "write /dev/shm": attempt(lambda: write("/dev/shm/marker")),
        "write site-packages": attempt(lambda: write(os.path.join(site, "planted.pth"))),
        "write the harness package": attempt(lambda: write(os.path.join(harness_dir, "planted.py"))),
        "write the stdlib": attempt(lambda: write(os.path.join(stdlib, "planted.py"))),
        "write /usr": attempt(lambda: write("/usr/planted")),
        "write /": attempt(lambda: write("/planted")),
        "write /etc": attempt(lambda: write("/etc/planted")),
        "remount / read-write": attempt(lambda: syscall(LIBC.mount(b"none", b"/", None, MS_REMOUNT | MS_BIND, None))),
        "unmount the work dir": attempt(lambda: syscall(LIBC.umount2(work_dir.encode(), MNT_DETACH))),
        "unmount /tmp": attempt(lambda: syscall(LIBC.umount2(b"/tmp", MNT_DETACH))),
        "mount a tmpfs": attempt(lambda: syscall(LIBC.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None))),
        "new user namespace": attempt(lambda: syscall(LIBC.unshare(CLONE_NEWUSER))),
        "new mount namespace": attempt(lambda: syscall(LIBC.unshare(CLONE_NEWNS))),
        "connect to the host": attempt(lambda: socket.create_connection(("127.0.0.1", int(port)), timeout=2)),
        "fill /tmp": fill("/tmp/big", int(tmp_bytes) + (4 << 20)),
        "fill /dev/shm": fill("/dev/shm/big", int(tmp_bytes) + (4 << 20)),
    }
    with open(os.path.join(work_dir, "harness_file.txt"), "w") as handle:  # for the parent to check
        handle.write(os.environ.get("HARNESS_SANDBOX", ""))
    return results


def burn(seconds: str, threads: str) -> dict:
    """Busy threads that really run in parallel (hashlib releases the GIL on large inputs)."""
    block = b"x" * (1 << 20)
    stop = time.monotonic() + float(seconds)

    def spin() -> None:
        while time.monotonic() < stop:
            hashlib.sha256(block).digest()

    started = time.monotonic()
    workers = [threading.Thread(target=spin) for _ in range(int(threads))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {"wall": time.monotonic() - started, "cpu": time.process_time()}


def spin(sleepers: str) -> dict:
    """A busy loop beside idle threads, until the parent kills it (or 60 s pass)."""
    for _ in range(int(sleepers)):
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    print(json.dumps({"ready": True}), flush=True)
    stop = time.monotonic() + 60
    while time.monotonic() < stop:
        pass
    return {"ready": False}


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    print(json.dumps({"attempts": attempts, "burn": burn, "spin": spin}[mode](*args)), flush=True)
