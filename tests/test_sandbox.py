"""The sandbox, proved from inside: a probe (tests/sandbox_probe.py) started through
`start_sandboxed` tries what a hostile entry would, as root outside it, with a real bwrap and real
cgroups. Its files and identity are then checked from the host."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.sandbox import (
    Cgroup, Confinement, SandboxSpec, bwrap_problem, disk_usage, parse_identity, resolve_confinement, resolve_mode,
    cgroup_name, pid_namespace, remove_tree, start_sandboxed, sweep_orphan_cgroups,
)
from tests.conftest import ptb_dir

PROBE = Path(__file__).resolve().parent / "sandbox_probe.py"
REPO = PROBE.parent.parent
TMP_BYTES = 8 << 20
AS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def confinement() -> Confinement:
    problem = bwrap_problem()
    if problem:
        pytest.fail(f"bubblewrap is needed: {problem}")
    return resolve_confinement("bwrap")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback server on the host: the sandbox must not reach it."""
    server = socket.create_server(("127.0.0.1", 0))
    yield server
    server.close()


def run_probe(work_dir: Path, confinement: Confinement, *args: str, cgroup: Cgroup | None = None,
              read_only: tuple[Path, ...] = (), timeout: float = 60) -> dict:
    work_dir.mkdir(parents=True, exist_ok=True)
    spec = SandboxSpec(work_dir, read_only=(PROBE, *read_only), tmp_bytes=TMP_BYTES)
    child = start_sandboxed([sys.executable, "-I", str(PROBE), *args], spec, confinement, cgroup,
                            stdout=subprocess.PIPE)
    output, _ = child.communicate(timeout=timeout)
    text = output.decode(errors="replace")
    assert child.returncode == 0, text
    return json.loads(text.strip().splitlines()[-1])


def tmp_ancestor(work_dir: Path) -> list[str]:
    """What /tmp holds inside only because the work dir lies under it (the folders leading to it)."""
    return [work_dir.relative_to("/tmp").parts[0]] if work_dir.is_relative_to("/tmp") else []


def test_sandbox_proofs_from_inside(tmp_path: Path, confinement: Confinement, listener: socket.socket) -> None:
    data = ptb_dir()
    assert (data / "ptb.test.txt").is_file()
    visible = tmp_path / "visible"  # shown read-only: visible, but host permissions still apply
    visible.mkdir()
    secret = visible / "secret.txt"
    secret.write_text("root only")
    secret.chmod(0o600)
    work = tmp_path / "run"
    port = str(listener.getsockname()[1])
    results = run_probe(work, confinement, "attempts", str(work), str(data), str(secret), port, str(TMP_BYTES),
                        read_only=(visible,))

    for name in ("read /etc/shadow", "read /root/.bashrc", "read ptb.test.txt", "write site-packages",
                 "write the harness package", "write the stdlib", "write /usr", "write /", "write /etc",
                 "remount / read-write", "unmount the work dir", "unmount /tmp", "mount a tmpfs",
                 "new user namespace", "new mount namespace", "connect to the host"):
        assert results[name].startswith("failed"), f"{name}: {results[name]}"
    for name in ("write the work dir", "write /tmp", "write /dev/shm"):
        assert results[name] == "succeeded", f"{name}: {results[name]}"
    assert results["tmp"] == tmp_ancestor(work) and results["shm"] == []  # fresh and empty at start
    assert results["fill /tmp"] == "ENOSPC" and results["fill /dev/shm"] == "ENOSPC"
    assert results["root"] in (None, [], [".pyenv"])  # at most the folder leading to the interpreter
    assert results["interfaces"] == ["lo"]
    assert len(results["processes"]) <= 4  # the sandbox's own processes, none of the host's
    assert str(data) not in results["mounts"] and "shadow" not in results["mounts"]
    if AS_ROOT:  # the identity the host checks permissions against is unprivileged
        assert results["read a root-only file"].startswith("failed")
        assert (work / "owned.txt").stat().st_uid == confinement.identity[0] != 0
        assert work.stat().st_uid == confinement.identity[0] and work.stat().st_mode & 0o777 == 0o700
    assert not (REPO / "harness" / "planted.py").exists()
    assert (work / "harness_file.txt").read_text() == "bwrap"


def test_tmp_and_shm_are_not_shared_between_sandboxes(tmp_path: Path, confinement: Confinement) -> None:
    """Also with a work dir outside /tmp (a runs dir in the organiser's checkout): the private /tmp
    then has no folder leading to it, and its mount point must still exist in the inner layer."""
    outside = Path(tempfile.mkdtemp(prefix="ptb-harness-test-", dir="/var/tmp"))
    for work in (tmp_path / "first", outside / "second"):
        name = work.name
        results = run_probe(work, confinement, "attempts", str(work), "/nonexistent", "/nonexistent", "9",
                            str(TMP_BYTES))
        assert results["write /tmp"] == results["write /dev/shm"] == "succeeded"
        assert results["tmp"] == tmp_ancestor(work), f"{name}: /tmp kept {results['tmp']}"
        assert results["shm"] == [], f"{name}: /dev/shm kept {results['shm']}"
    assert not Path("/tmp/marker").exists() and not Path("/dev/shm/marker").exists()
    shutil.rmtree(outside)


def test_the_harness_and_torch_import_in_isolated_mode_and_passed_fds_arrive(
        tmp_path: Path, confinement: Confinement) -> None:
    """What a worker needs: `python -I` finds the harness and torch; its channel fd gets through."""
    work = tmp_path / "run"
    work.mkdir()
    read_end, write_end = os.pipe()
    code = (f"import os, harness.contract, torch\nos.write({write_end}, str(torch.ones(3).sum().item()).encode())\n"
            "print(os.environ['HOME'], os.environ['TORCH_HOME'])")
    child = start_sandboxed([sys.executable, "-I", "-c", code], SandboxSpec(work), confinement, None,
                            pass_fds=(write_end,), stdout=subprocess.PIPE)
    os.close(write_end)
    output, _ = child.communicate(timeout=120)
    with os.fdopen(read_end, "rb") as channel:
        assert channel.read() == b"3.0", output
    assert child.returncode == 0, output
    assert output.decode().split() == ["/tmp", "/tmp/.cache/torch"]


def new_cgroup(name: str, memory: int = 1 << 30, cpus: float | None = None) -> Cgroup:
    group, note = Cgroup.create(f"ptb-harness-test-{os.getpid()}-{name}", memory, cpus)
    if group is None:
        pytest.fail(f"a cgroup is needed: {note}")
    return group


def test_more_threads_than_the_cpu_quota_get_no_more_cpu(tmp_path: Path, confinement: Confinement) -> None:
    # A quarter of a CPU: well under what two busy threads get even on a loaded two-core machine.
    quota = 0.25
    group = new_cgroup("quota", cpus=quota)
    assert "cpu" in group.controllers, "no cpu controller"
    try:
        started = time.monotonic()
        results = run_probe(tmp_path / "run", confinement, "burn", "2", "2", cgroup=group)
        wall = time.monotonic() - started
        used = group.cpu_seconds()
    finally:
        group.kill_all()
        group.remove()
    assert results["cpu"] <= 1.3 * quota * results["wall"], results  # two busy threads, a quarter CPU's worth
    assert 0.5 * quota * wall < used <= 1.3 * quota * wall, (used, wall)  # measured by the cgroup, layers included


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a CPU set narrower than the machine needs two CPUs")
def test_a_cpu_lease_holds_the_sandboxed_process_and_it_cannot_widen_it(tmp_path: Path,
                                                                        confinement: Confinement) -> None:
    """A run's CPUs (harness.cpus) are its affinity and its cpuset cgroup: asking the kernel for every
    CPU from inside gets nothing more, so its neighbour's CPUs stay its neighbour's."""
    cpu = max(os.sched_getaffinity(0))
    group, note = Cgroup.create(f"ptb-harness-test-{os.getpid()}-cpuset", 1 << 30, 1.0, (cpu,))
    assert group is not None, note
    if "cpuset" not in group.controllers:  # said with every run ("affinity mask only") and by doctor
        group.remove()
        pytest.skip(f"no cpuset controller on this machine: {note}")
    code = ("import os, json\nbefore = sorted(os.sched_getaffinity(0))\n"
            "try:\n    os.sched_setaffinity(0, range(os.cpu_count()))\nexcept OSError as exc:\n    pass\n"
            "print(json.dumps([before, sorted(os.sched_getaffinity(0))]))")
    work = tmp_path / "run"
    work.mkdir()
    try:
        child = start_sandboxed([sys.executable, "-I", "-c", code], SandboxSpec(work, cpus=(cpu,)), confinement,
                                group, stdout=subprocess.PIPE)
        output, _ = child.communicate(timeout=60)
    finally:
        group.kill_all()
        group.remove()
    assert child.returncode == 0, output
    assert json.loads(output.decode().strip().splitlines()[-1]) == [[cpu], [cpu]]


def test_a_killed_supervisors_frozen_groups_are_swept_before_the_next_run(tmp_path: Path) -> None:
    """A supervisor killed outright leaves its cgroups, and on v1 a frozen process in one cannot die
    (it handles no signal): the next run thaws, kills and removes them. A live supervisor's stay."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a supervisor pid that is no longer alive
    orphan, note = Cgroup.create(cgroup_name("scorer 1", gone.pid), 1 << 30, 1.0)
    live, _ = Cgroup.create(cgroup_name("trainer"), 1 << 30, 1.0)
    # A group of another pid namespace's harness with the same dead pid: its pid means nothing here.
    foreign, _ = Cgroup.create(f"ptb-harness-{gone.pid}.{pid_namespace() + 1}-89abcdef-trainer", 1 << 30, 1.0)
    assert orphan is not None and live is not None and foreign is not None and orphan.can_freeze, note
    sleeper = subprocess.Popen(["sleep", "600"], preexec_fn=orphan.join)
    try:
        assert orphan.freeze()
        assert sweep_orphan_cgroups() >= 1
        assert sleeper.wait(timeout=10) == -9  # thawed, then killed
        assert not any(path.exists() for path in orphan.paths.values())
        assert all(path.exists() for path in live.paths.values())  # this process's own: kept
        assert all(path.exists() for path in foreign.paths.values())  # another namespace's: kept
    finally:
        sleeper.kill()
        orphan.thaw()
        orphan.kill_all()
        orphan.remove()
        live.remove()
        foreign.remove()


def grows(group: Cgroup, start: float, by: float, within: float = 10.0) -> bool:
    """Whether the group's CPU time passes `start + by` within `within` s (the machine is shared)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if group.cpu_seconds() > start + by:
            return True
        time.sleep(0.05)
    return False


def test_freeze_stops_a_busy_loop_and_thaw_resumes_it(tmp_path: Path, confinement: Confinement) -> None:
    group = new_cgroup("freeze")
    assert group.can_freeze
    work = tmp_path / "run"
    work.mkdir()
    spec = SandboxSpec(work, read_only=(PROBE,), tmp_bytes=TMP_BYTES)
    child = start_sandboxed([sys.executable, "-I", str(PROBE), "spin", "3"], spec, confinement, group,
                            stdout=subprocess.PIPE)
    try:
        assert json.loads(child.stdout.readline()) == {"ready": True}
        assert group.thread_count() == 4  # the busy main thread and three sleepers; bwrap's not counted
        assert child.pid in group.pids()
        assert grows(group, group.cpu_seconds(), 0.1), "the loop does not run"
        assert group.freeze()
        frozen_at = group.cpu_seconds()
        time.sleep(0.5)
        assert group.cpu_seconds() - frozen_at < 0.02
        group.thaw()
        assert grows(group, frozen_at, 0.1), "the loop did not resume after thaw"
        group.kill_all()
        child.wait(timeout=10)
        assert group.pids() == []
    finally:
        child.kill()
        child.wait()
        group.remove()
    assert all(not path.exists() for path in group.paths.values())


def runs_python(group: Cgroup) -> bool:
    """Whether the sandboxed interpreter itself is up in the group (past the bwrap layers)."""
    interpreter = os.path.realpath(sys.executable)
    for pid in group.pids():
        try:
            if os.path.realpath(f"/proc/{pid}/exe") == interpreter:
                return True
        except OSError:
            continue
    return False


def test_the_sandboxed_tree_dies_with_the_harness(tmp_path: Path, confinement: Confinement) -> None:
    """kill -9 of the process that started the sandbox takes every layer and the run with it."""
    group = new_cgroup("orphan")
    work = tmp_path / "run"
    work.mkdir()
    driver = (
        "import subprocess, sys, time\nfrom pathlib import Path\n"
        "from harness.sandbox import Cgroup, Confinement, SandboxSpec, start_sandboxed\n"
        f"group = Cgroup({ {c: str(p) for c, p in group.paths.items()} !r}, {group.version})\n"
        "group.paths = {c: Path(p) for c, p in group.paths.items()}\n"
        f"child = start_sandboxed([sys.executable, '-I', '-c', 'import time; time.sleep(60)'], SandboxSpec(Path("
        f"{str(work)!r})), Confinement('bwrap', {confinement.identity!r}), group)\n"
        "print('started', flush=True)\ntime.sleep(60)\n"
    )
    harness = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, text=True)
    try:
        assert harness.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 10
        while not runs_python(group) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runs_python(group) and len(group.pids()) >= 3  # bwrap's layers and the sandboxed python
        harness.kill()
        harness.wait()
        deadline = time.monotonic() + 10
        while group.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert group.pids() == []
    finally:
        harness.kill()
        harness.wait()
        group.kill_all()
        group.remove()


def test_the_memory_ceiling_stops_a_run_and_is_reported(tmp_path: Path, confinement: Confinement) -> None:
    group = new_cgroup("memory", memory=96 << 20)
    assert group.limits_memory
    work = tmp_path / "run"
    work.mkdir()
    spec = SandboxSpec(work, tmp_bytes=TMP_BYTES)
    grab = "b = bytearray(400 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1"
    child = start_sandboxed([sys.executable, "-I", "-c", grab], spec, confinement, group, stdout=subprocess.PIPE)
    try:
        child.communicate(timeout=60)
        assert child.returncode != 0
        assert group.oom_killed()
        assert 64 << 20 < group.peak_bytes() <= 96 << 20
    finally:
        group.kill_all()
        group.remove()


def test_none_mode_runs_the_command_with_a_warning_and_a_cleared_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    confinement = resolve_confinement("none")
    assert confinement.sandbox == "none" and confinement.note.startswith("WARNING: sandbox disabled")
    monkeypatch.setenv("HARNESS_DB", "/secret/path/harness.sqlite")
    work = tmp_path / "run"
    work.mkdir()
    show = "import json, os; print(json.dumps({'env': dict(os.environ), 'uid': os.getuid(), 'cwd': os.getcwd()}))"
    child = start_sandboxed([sys.executable, "-I", "-c", show], SandboxSpec(work, environment={"X": "1"}),
                            confinement, None, stdout=subprocess.PIPE)
    output, _ = child.communicate(timeout=60)
    seen = json.loads(output)
    assert child.returncode == 0
    assert seen["uid"] == os.getuid() and seen["cwd"] == str(work.resolve())
    assert "HARNESS_DB" not in seen["env"] and seen["env"]["X"] == "1"
    assert seen["env"]["HOME"].startswith(str(work.resolve()))  # nothing kept in the harness's home
    assert confinement.as_dict() == {"sandbox": "none", "identity": f"{os.getuid()}:{os.getgid()}",
                                     "note": confinement.note}


@pytest.mark.skipif(not AS_ROOT or not Path("/usr/bin/python3").is_file(), reason="needs root to become nobody")
def test_one_layer_sandbox_when_the_harness_is_not_root() -> None:
    """The harness run as `nobody` (the system's Python, which nobody can read): one bwrap layer."""
    scratch = Path(tempfile.mkdtemp(prefix="ptb-harness-nobody-"))
    try:
        scratch.chmod(0o755)
        work = scratch / "run"
        work.mkdir()
        os.chown(work, 65534, 65534)
        driver = (
            f"import json, subprocess, sys; sys.path.insert(0, {str(REPO)!r})\n"
            "from pathlib import Path\n"
            "from harness.sandbox import Confinement, SandboxSpec, start_sandboxed\n"
            f"probe = {str(PROBE)!r}\n"
            f"child = start_sandboxed(['/usr/bin/python3', '-I', probe, 'attempts', {str(work)!r}, '/no', '/no', '9',"
            f" '{TMP_BYTES}'], SandboxSpec(Path({str(work)!r}), (Path(probe),), {TMP_BYTES}), Confinement('bwrap'),"
            " None, stdout=subprocess.PIPE)\n"
            "print(child.communicate(timeout=60)[0].decode())\n"
        )
        done = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--",
                               "/usr/bin/python3", "-c", driver], capture_output=True, text=True, timeout=90,
                              cwd="/", env={"PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr
        results = json.loads(done.stdout.strip().splitlines()[-1])
        for name in ("read /etc/shadow", "write site-packages", "write /usr", "new user namespace",
                     "remount / read-write", "connect to the host"):
            assert results[name].startswith("failed"), f"{name}: {results[name]}"
        assert results["write the work dir"] == "succeeded" and results["fill /tmp"] == "ENOSPC"
        assert results["tmp"] == tmp_ancestor(work) and results["shm"] == []
        assert (work / "owned.txt").stat().st_uid == 65534
    finally:
        shutil.rmtree(scratch)


def test_resolve_confinement(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_identity(None) == parse_identity("nobody") == (65534, 65534)
    assert parse_identity("1234:5678") == (1234, 5678) and parse_identity("1234") == (1234, 1234)
    for bad in ("root", "0:0", "no-such-user-here", "nobody:no-such-group"):
        with pytest.raises(ConfigError):
            parse_identity(bad)
    with pytest.raises(ConfigError, match="--sandbox must be one of"):
        resolve_confinement("chroot")
    monkeypatch.setattr("harness.sandbox.bwrap_problem", lambda identity=None: "bwrap is not installed")
    fallback = resolve_confinement("auto")
    assert fallback.sandbox == "none" and fallback.note.startswith("WARNING: no sandbox: bwrap is not installed")
    assert resolve_mode("auto") == ("none", fallback.note)
    with pytest.raises(ConfigError, match="--sandbox bwrap was asked for, but bwrap is not installed"):
        resolve_confinement("bwrap")
    monkeypatch.setattr("harness.sandbox.bwrap_problem", lambda identity=None: None)
    if AS_ROOT:
        assert resolve_confinement("auto", "1234:5678").identity == (1234, 5678)
        assert resolve_confinement("bwrap").as_dict()["identity"] == "65534:65534"


def test_a_folder_chain_deeper_than_pythons_recursion_is_removed(tmp_path: Path) -> None:
    """What a hostile entry leaves in its work dir: 3,000 nested folders (shutil.rmtree raised
    RecursionError on them and the run's verdict became a harness error), and a link out of it."""
    work = tmp_path / "work"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("kept")
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        os.mkdir("work", dir_fd=fd)
        current = os.open("work", os.O_RDONLY, dir_fd=fd)
        os.symlink(str(outside), "link", dir_fd=current)
        for _ in range(3000):
            os.mkdir("d", dir_fd=current)
            deeper = os.open("d", os.O_RDONLY, dir_fd=current)
            os.close(current)
            current = deeper
        os.close(current)
    finally:
        os.close(fd)
    remove_tree(work)
    assert not work.exists() and (outside / "keep.txt").read_text() == "kept"


def test_disk_usage_counts_without_following_links(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one").write_bytes(b"x" * 10_000)
    (tmp_path / "two").write_bytes(b"x" * 3)
    big = tmp_path.parent / f"{tmp_path.name}-outside"
    big.write_bytes(b"y" * 1_000_000)
    try:
        (tmp_path / "link").symlink_to(big)
        (tmp_path / "a" / "loop").symlink_to(tmp_path)
        size, entries = disk_usage(tmp_path)
        assert entries == 5
        assert 10_003 <= size < 100_000  # the linked megabyte is not counted, nor the loop walked
        assert disk_usage(tmp_path, max_entries=2)[1] == 3  # stops just past the cap
        sparse = tmp_path / "sparse"
        with sparse.open("wb") as handle:
            handle.truncate(50_000_000)
        assert disk_usage(tmp_path)[0] >= 50_000_000
    finally:
        big.unlink()
