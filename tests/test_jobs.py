"""Runs side by side on one machine (`--jobs N`, or several runners): each on its own CPUs, confined
there by the kernel, and Ctrl-C stops them all. Real harness processes, sandboxes and cgroups (slow)."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from harness.cpus import machine_cpus
from harness.store import Store
from tests.conftest import ENTRIES, REPO, default_sigint, make_project, run_cli
from tests.test_cpus import hold_in_another_process

pytestmark = pytest.mark.slow

needs_two_cpus = pytest.mark.skipif(len(machine_cpus()) < 2, reason="side-by-side runs need two CPUs")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = make_project(tmp_path, slow_a=ENTRIES / "slow_counter.py", slow_b=ENTRIES / "slow_counter.py",
                          sleepy_a=ENTRIES / "sleepy.py", sleepy_b=ENTRIES / "sleepy.py")
    for name in ("slow_a", "slow_b"):  # two entries, not one entry twice
        path = folder / "submissions" / f"{name}.py"
        path.write_text(path.read_text().replace('name = "slow_counter"', f'name = "{name}"'))
    return folder


def cpuset_available() -> bool:
    from harness.sandbox import Cgroup

    group, _ = Cgroup.create(f"ptb-harness-test-{os.getpid()}-cpuset-probe", 1 << 30, 1.0, (machine_cpus()[0],))
    if group is None:
        return False
    found = "cpuset" in group.controllers
    group.remove()
    return found


def start(project: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "run", *args], cwd=project,
                            env={**os.environ, **env, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)


def training(project: Path) -> list:
    db = project / "harness.sqlite"
    return [r for r in Store(db).runs() if r.status == "running" and r.environment] if db.exists() else []


@needs_two_cpus
def test_jobs_run_side_by_side_each_confined_to_its_own_cpu(project: Path, env: dict[str, str]) -> None:
    result = run_cli("run", "slow_a", "slow_b", "--jobs", "2", "--threads", "1", cwd=project, env=env)
    assert result.code == 0, result.stderr
    assert "2 at a time, each on its own CPUs" in result.stderr
    runs = Store(project / "harness.sqlite").runs()
    assert [r.status for r in runs] == ["ok", "ok"]
    cpus = [r.isolation["cpus"] for r in runs]
    assert len(set(cpus)) == 2 and all(c.isdigit() for c in cpus), cpus  # one CPU each, not the same one
    # The kernel holds them there where the machine has a cpuset controller (said otherwise).
    assert all(r.isolation["cpuset"] == ("cgroup" if cpuset_available() else "affinity mask only") for r in runs)
    first, second = sorted(runs, key=lambda r: r.started_at)
    assert second.started_at < first.ended_at  # they overlapped: side by side, not one after another
    assert runs[0].test_ppl == pytest.approx(runs[1].test_ppl, rel=1e-12)  # same counts, same score


@needs_two_cpus
def test_jobs_beyond_what_the_cpus_hold_are_said_and_not_started(project: Path, env: dict[str, str]) -> None:
    threads = str(len(machine_cpus()))
    result = run_cli("run", "slow_a", "slow_b", "--jobs", "2", "--threads", threads, "--dry-run",
                     cwd=project, env=env)
    assert result.code == 0, result.stderr
    assert f"runs of {threads} thread(s) fit 1 at a time" in result.stderr
    assert "at a time, each on its own CPUs" not in result.stderr


def test_jobs_is_refused_with_the_ray_executor(project: Path, env: dict[str, str]) -> None:
    result = run_cli("run", "slow_a", "--jobs", "2", "--executor", "ray", "--dry-run", cwd=project, env=env)
    assert result.code == 2 and "--jobs is for the local executor" in result.stderr
    assert "Traceback" not in result.stderr


@needs_two_cpus
def test_ctrl_c_stops_every_run_out_and_leaves_no_process(project: Path, env: dict[str, str]) -> None:
    harness = start(project, env, "sleepy_a", "sleepy_b", "--jobs", "2", "--threads", "1", "--budget", "300")
    try:
        deadline = time.monotonic() + 120
        while len(training(project)) < 2 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert len(training(project)) == 2, "both runs should be training at once"
        children = psutil.Process(harness.pid).children(recursive=True)
        harness.send_signal(signal.SIGINT)
        _, stderr = harness.communicate(timeout=90)
    finally:  # a harness left running would hold its CPUs from the tests after this one
        if harness.poll() is None:
            harness.kill()
            harness.wait()
    assert harness.returncode == 130, stderr
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"processes outlived the interrupted runs: {alive}"
    runs = Store(project / "harness.sqlite").runs()
    assert [(r.status, r.failure) for r in runs] == [("interrupted", "interrupted")] * 2
    assert all(r.ended_at for r in runs)


def test_a_run_waits_while_another_runner_holds_the_cpus(project: Path, env: dict[str, str]) -> None:
    """Another runner on the machine (here a process holding every CPU's lock): the run starts only
    once those CPUs are free, and says why it waits."""
    count = len(machine_cpus())
    holder, held = hold_in_another_process(Path(os.environ["HARNESS_LOCK_DIR"]), max(machine_cpus()) + 1,
                                           max(machine_cpus()) + 1)
    try:
        assert held != "none"
        harness = start(project, env, "slow_a", "--hparam", "max_steps=5")
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in harness.stderr], daemon=True).start()
        said: list[str] = []
        deadline = time.monotonic() + 180
        while not any("waiting for" in line for line in said) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                said.append(lines.get(timeout=1))
        assert f"waiting for {count} CPU(s)" in "".join(said), said
        time.sleep(3)
        assert harness.poll() is None and not training(project)  # claimed, not started: no CPU for it
        holder.kill()
        holder.wait()
        harness.wait(timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert harness.returncode == 0, said
    (run,) = Store(project / "harness.sqlite").runs()
    assert run.status == "ok" and run.steps == 5
