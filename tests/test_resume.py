"""Reuse, resume and concurrency with real harness processes, signals and one SQLite file (slow)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness.store import Store
from tests.conftest import ENTRIES, REPO, make_project, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path, counts=REPO / "baselines" / "unigram.py",
                        slow_counter=ENTRIES / "slow_counter.py")


def all_runs(project: Path) -> list:
    return Store(project / "harness.sqlite").runs()


def start_harness(project: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--all", *args], cwd=project,
                            env={**os.environ, **env, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_training(project: Path, entry: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (project / "harness.sqlite").exists():
            runs = [r for r in all_runs(project) if r.entry == entry and r.status == "running"]
            if runs and runs[-1].environment:
                return
        time.sleep(0.3)
    raise AssertionError(f"{entry} never started training")


def test_second_run_reuses_everything_and_reruns_exactly_the_changed_entry(project: Path, env: dict) -> None:
    first = run_cli("run", "--all", cwd=project, env=env)
    assert first.code == 0, first.stderr
    assert len(all_runs(project)) == 3
    again = run_cli("run", "--all", cwd=project, env=env)
    assert again.code == 0 and again.stderr.count("reused run") == 3
    assert len(all_runs(project)) == 3
    entry = project / "submissions" / "counts.py"
    entry.write_text(entry.read_text() + "\n# tuned\n")
    third = run_cli("run", "--all", cwd=project, env=env)
    assert third.stderr.count("reused run") == 2
    runs = all_runs(project)
    assert len(runs) == 4 and runs[-1].entry == "counts" and runs[-1].status == "ok"
    forced = run_cli("run", "unigram", "--force", cwd=project, env=env)
    assert "reused" not in forced.stderr and len(all_runs(project)) == 5


def test_failed_runs_keep_their_error_and_rerun_only_on_request(project: Path, env: dict) -> None:
    shutil.copy(ENTRIES / "crashing.py", project / "submissions" / "crashing.py")
    assert run_cli("run", "crashing", cwd=project, env=env).code == 1
    reused = run_cli("run", "crashing", cwd=project, env=env)
    assert reused.code == 1 and "reused run 1: crashing: failed" in reused.stderr
    assert "deliberate failure at step 3" in reused.stderr
    retried = run_cli("run", "crashing", "--retry-failed", cwd=project, env=env)
    assert "reused" not in retried.stderr
    assert [r.status for r in all_runs(project)] == ["failed", "failed"]


def test_kill_9_mid_run_then_rerun_leaves_a_complete_consistent_database(project: Path, env: dict) -> None:
    harness = start_harness(project, env)
    wait_until_training(project, "slow_counter")
    children = psutil.Process(harness.pid).children(recursive=True)
    harness.kill()  # SIGKILL: no chance to clean up
    harness.wait()
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, "the run's process outlived the killed harness"
    rerun = run_cli("run", "--all", cwd=project, env=env)
    assert rerun.code == 0, rerun.stderr
    assert "marked 1 run(s) left unfinished" in rerun.stderr
    runs = all_runs(project)
    by_entry = {}
    for run in runs:
        by_entry.setdefault(run.entry, []).append(run.status)
    assert by_entry["slow_counter"] == ["interrupted", "ok"]
    assert all(statuses[-1] == "ok" for statuses in by_entry.values())
    assert not [r for r in runs if r.status == "running"]
    with sqlite3.connect(project / "harness.sqlite") as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_two_concurrent_runners_lose_and_duplicate_nothing(project: Path, env: dict) -> None:
    first = start_harness(project, env)
    second = start_harness(project, env)
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    runs = all_runs(project)
    assert sorted(r.entry for r in runs) == ["counts", "slow_counter", "unigram"]
    assert all(r.status == "ok" for r in runs)
    assert len({r.run_key for r in runs}) == 3
    final = run_cli("run", "--all", cwd=project, env=env)
    assert final.stderr.count("reused run") == 3


def test_budget_from_config_and_flag_precedence(project: Path, env: dict) -> None:
    (project / "competition.toml").write_text(
        '[competition]\nseeds = 2\n[divisions.cpu]\ndevice = "cpu"\nbudget = 123\nmemory = "3GiB"\n')
    assert run_cli("run", "unigram", cwd=project, env=env).code == 0
    assert run_cli("run", "unigram", "--budget", "77", "--seeds", "1", cwd=project, env=env).code == 0
    runs = all_runs(project)
    assert [(r.seed, r.budget_seconds, r.memory_limit_bytes) for r in runs] == [
        (0, 123.0, 3 * 2**30), (1, 123.0, 3 * 2**30), (0, 77.0, 3 * 2**30)]
    assert runs[0].config["division"] == "cpu" and runs[0].division == "cpu"
    bad = run_cli("run", "unigram", "--config", "missing.toml", cwd=project, env=env)
    assert bad.code == 2 and "does not exist" in bad.stderr
