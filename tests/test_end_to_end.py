"""Whole runs through `harness run`, real processes, real PTB data, real budgets (slow)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness.store import Store
from tests.conftest import ENTRIES, REPO, default_sigint, make_project, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def runs(project: Path) -> dict[str, dict]:
    return {run.entry: run.as_dict() for run in Store(project / "harness.sqlite").runs()}


def test_unigram_reproduces_the_published_perplexities(project: Path, env: dict[str, str]) -> None:
    result = run_cli("run", "unigram", "--json", cwd=project, env=env)
    assert result.code == 0, result.stderr
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["status"] == "ok"
    run = runs(project)["unigram"]
    assert run["test_tokens"] == 82_430 and run["valid_tokens"] == 73_760
    assert run["test_ppl"] == pytest.approx(639.3, abs=0.05)
    assert run["valid_ppl"] == pytest.approx(687.0, abs=0.05)
    # What a reader needs to trust and reproduce it.
    assert run["epochs"] == 1.0 and run["stop_reason"] == "max_epochs"
    assert run["tokens_trained"] == 929_589  # batch_size 1: every train token counted once
    assert run["seed"] == 0 and run["device"] == "cpu" and run["torch_version"]
    assert run["threads"] == os.cpu_count() and run["python_version"]
    assert run["hparams"]["max_epochs"] == 1 and run["source_hash"]
    assert run["data_checksums"]["test"].startswith("dd65dff3")
    assert run["checks"]["causality"] == "passed" and run["param_count"] == 10_000  # the counts it scores with
    assert run["checks"]["causality_audits"] >= 4 and run["checks"]["replay_probes"] >= 4
    assert run["peak_memory_bytes"] > 0 and run["ended_at"]


def test_small_neural_entry_trains_and_scores(project: Path, env: dict[str, str]) -> None:
    """Quality from a step limit (not from the machine's speed); the budget only has to be ample."""
    result = run_cli("run", str(ENTRIES / "tiny_lstm.py"), "--budget", "600", "--evals", "2",
                     "--hparam", "max_steps=400", cwd=project, env=env)
    assert result.code == 0, result.stderr
    run = runs(project)["tiny_lstm"]
    assert run["status"] == "ok" and run["stop_reason"] == "max_steps" and run["steps"] == 400
    assert run["tokens_trained"] == 400 * 32 * 32  # counted by the supervisor from what it handed out
    assert run["test_ppl"] < 639.3  # learnt more than word frequencies in 400 steps
    assert run["test_tokens"] == 82_430
    store = Store(project / "harness.sqlite")
    assert store.get_run(run["id"]).train_seconds < 600


def test_step_that_never_returns_is_killed_and_recorded_timeout(project: Path, env: dict[str, str]) -> None:
    started = time.monotonic()
    result = run_cli("run", str(ENTRIES / "sleepy.py"), "--budget", "3", cwd=project, env=env)
    assert result.code == 1
    assert time.monotonic() - started < 60
    run = runs(project)["sleepy"]
    assert run["status"] == "timeout" and run["failure"] == "timeout"
    assert "past the 3 s budget" in run["reason"]
    assert run["test_ppl"] is None


@pytest.mark.parametrize("entry", ["memory_hog", "grandchild_hog"])
def test_memory_over_budget_is_killed_and_recorded_with_its_peak(project: Path, env: dict[str, str], entry: str) -> None:
    result = run_cli("run", str(ENTRIES / f"{entry}.py"), "--memory", "1GiB", "--budget", "60", cwd=project, env=env)
    assert result.code == 1
    run = runs(project)[entry]
    assert run["status"] == "out_of_memory"
    # Killed by the supervisor's measurement past the budget, or by the kernel's cgroup at it.
    assert run["peak_memory_bytes"] >= 0.95 * 2**30
    assert "1.0 GiB budget" in run["reason"]


def test_a_crashing_entry_fails_alone_in_run_all(project: Path, env: dict[str, str]) -> None:
    shutil.copy(ENTRIES / "crashing.py", project / "submissions" / "crashing.py")
    (project / "submissions" / "syntax_error.py").write_text("def broken(:\n")
    result = run_cli("run", "--all", cwd=project, env=env)
    assert result.code == 1
    found = runs(project)
    assert set(found) == {"crashing", "syntax_error", "unigram"}
    assert found["unigram"]["status"] == "ok"
    assert found["unigram"]["test_ppl"] == pytest.approx(639.3, abs=0.05)
    assert found["crashing"]["status"] == "failed" and found["crashing"]["failure"] == "runtime_error"
    assert "deliberate failure at step 3" in found["crashing"]["traceback"]
    assert found["syntax_error"]["failure"] == "import_error"
    assert "SyntaxError" in found["syntax_error"]["reason"]
    with sqlite3.connect(project / "harness.sqlite") as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def is_scorer(process: psutil.Process) -> bool:
    try:
        return "harness.sandboxed.scorer" in " ".join(process.cmdline())
    except psutil.Error:
        return False


@pytest.mark.parametrize(("sent", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_records_the_run_in_progress_as_interrupted(project: Path, env: dict[str, str],
                                                                      sent: int, code: int) -> None:
    """Ctrl-C, or SIGTERM (kill, a scheduler ending the job), while it trains after a validation
    pass: the run is recorded and every sandboxed process is gone, the scorers (frozen while the
    trainer runs; on cgroup v1 a frozen process cannot die until thawed) included."""
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(ENTRIES / "slow_counter.py"),
                                "--budget", "120", "--evals", "2", "--hparam", "max_steps=100000"],
                               cwd=project, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=default_sigint)
    scorers: list[psutil.Process] = []
    deadline = time.monotonic() + 150
    while not scorers and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)  # the first validation pass starts the scorers; training then goes on
        scorers = [c for c in psutil.Process(process.pid).children(recursive=True) if is_scorer(c)]
    assert scorers, "the scorers never started"
    time.sleep(2)
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(sent)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    run = runs(project)["slow_counter"]
    assert run["status"] == "interrupted" and run["ended_at"] and run["steps"] > 0
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"sandboxed processes outlived the harness: {[c.pid for c in alive]}"
