"""From inside the bwrap sandbox, as root outside it: remounting, unmounting, reading the test
split and writing outside the run directory all fail, while the run directory stays writable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.sandbox import SandboxSpec, bwrap_command, bwrap_problem, resolve_mode
from harness.supervisor import PACKAGE_ROOT
from tests.conftest import ptb_dir

ATTEMPTS = r'''
import ctypes, json, os, sys
libc = ctypes.CDLL("libc.so.6", use_errno=True)
hidden, outside, run_dir = sys.argv[1], sys.argv[2], sys.argv[3]
results = {}

def attempt(name, action):
    try:
        action()
        results[name] = "succeeded"
    except Exception as exc:
        results[name] = f"failed: {type(exc).__name__}: {exc}"

def syscall(value):
    if value != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))

MS_REMOUNT, MS_BIND, MNT_DETACH = 32, 4096, 2
attempt("remount / read-write", lambda: syscall(libc.mount(b"none", b"/", None, MS_REMOUNT, None)))
attempt("unmount the hidden data", lambda: syscall(libc.umount2(hidden.encode(), MNT_DETACH)))
attempt("read ptb.test.txt", lambda: open(os.path.join(hidden, "ptb.test.txt")).read(1))
attempt("write outside the run directory", lambda: open(outside, "w").write("x"))
attempt("write the run directory", lambda: open(os.path.join(run_dir, "ok.txt"), "w").write("x"))
attempt("new user namespace", lambda: syscall(libc.unshare(0x10000000)))
print(json.dumps(results))
'''


def test_sandbox_blocks_remount_unmount_reads_and_writes(tmp_path: Path) -> None:
    problem = bwrap_problem()
    if problem:
        pytest.fail(f"bubblewrap is needed: {problem}")
    data = ptb_dir()
    assert (data / "ptb.test.txt").is_file()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    outside = PACKAGE_ROOT / "sandbox-escape.txt"  # the repository: readable, never writable
    spec = SandboxSpec(run_dir=run_dir, readable=[Path(sys.prefix), Path(sys.base_prefix), PACKAGE_ROOT],
                       hidden=[data], environment={"PATH": "/usr/bin:/bin"})
    command = bwrap_command([sys.executable, "-c", ATTEMPTS, str(data), str(outside), str(run_dir)], spec)
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    for name in ("remount / read-write", "unmount the hidden data", "read ptb.test.txt",
                 "write outside the run directory", "new user namespace"):
        assert results[name].startswith("failed"), f"{name}: {results[name]}"
    assert results["write the run directory"] == "succeeded"
    assert not outside.exists()
    assert (run_dir / "ok.txt").read_text() == "x"


def test_auto_mode_falls_back_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("harness.sandbox.bwrap_problem", lambda: "bwrap is not installed")
    assert resolve_mode("auto") == ("none", "no sandbox: bwrap is not installed; runs are isolated by process only")
    with pytest.raises(Exception, match="--sandbox bwrap was asked for, but bwrap is not installed"):
        resolve_mode("bwrap")
    assert resolve_mode("none")[0] == "none"
