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

import pytest

from harness.store import Store
from tests.conftest import ENTRIES, REPO, make_project, run_cli

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


def test_small_neural_entry_trains_and_scores_in_30_seconds(project: Path, env: dict[str, str]) -> None:
    result = run_cli("run", str(ENTRIES / "tiny_lstm.py"), "--budget", "30", "--evals", "2", cwd=project, env=env)
    assert result.code == 0, result.stderr
    run = runs(project)["tiny_lstm"]
    assert run["status"] == "ok" and run["stop_reason"] == "budget"
    assert 30 <= run["train_seconds"] < 32
    assert run["test_ppl"] < 639.3  # learnt more than word frequencies in 30 s
    assert run["test_tokens"] == 82_430
    store = Store(project / "harness.sqlite")
    curve = store.get_run(run["id"]).curve
    assert len(curve) == 2 and curve[0].valid_ppl > curve[1].valid_ppl


def test_step_that_never_returns_is_killed_and_recorded_timeout(project: Path, env: dict[str, str]) -> None:
    started = time.monotonic()
    result = run_cli("run", str(ENTRIES / "sleepy.py"), "--budget", "3", cwd=project, env=env)
    assert result.code == 1
    assert time.monotonic() - started < 60
    run = runs(project)["sleepy"]
    assert run["status"] == "timeout" and run["failure"] == "timeout"
    assert "past the 3 s budget" in run["reason"]
    assert run["test_ppl"] is None


def test_memory_over_budget_is_killed_and_recorded_with_its_peak(project: Path, env: dict[str, str]) -> None:
    result = run_cli("run", str(ENTRIES / "memory_hog.py"), "--memory", "1GiB", "--budget", "60", cwd=project, env=env)
    assert result.code == 1
    run = runs(project)["memory_hog"]
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


def test_ctrl_c_records_the_run_in_progress_as_interrupted(project: Path, env: dict[str, str]) -> None:
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(ENTRIES / "sleepy.py"),
                                "--budget", "120"], cwd=project, env=full_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = project / "harness.sqlite"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if db.exists() and any(r.environment for r in Store(db).runs()):
            break  # the child has started and reported its environment
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    run = runs(project)["sleepy"]
    assert run["status"] == "interrupted" and run["ended_at"]
