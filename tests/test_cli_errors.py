"""Errors a newcomer meets, through a real `harness` process: each one line (no traceback) with the
documented exit code; `harness disqualify`; the competition's `tracks`."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness.store import Store
from tests.conftest import REPO, CliResult, make_project, run_cli


def one_line_error(result: CliResult) -> str:
    """The error line of a failed command, checking it is the only thing on stderr (notes aside)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert "Traceback" not in result.stderr and len(errors) == 1, result.stderr
    assert lines[-1] == errors[0], result.stderr  # nothing after it
    return errors[0]


def usage_error(result: CliResult) -> str:
    """click's usage error: `Usage:`, `Try ... --help`, and one `Error:` line."""
    assert result.code == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


@pytest.mark.parametrize("budget", ["0", "-1", "inf", "nan", "-inf"])
def test_budget_must_be_positive_and_finite(project: Path, budget: str) -> None:
    error = usage_error(run_cli("run", "unigram", "--budget", budget, cwd=project))
    assert "'--budget': must be a positive number of seconds" in error


def test_serve_refuses_a_bad_port(project: Path) -> None:
    (project / "site").mkdir()
    assert "99999 is not in the range 0<=x<=65535" in usage_error(run_cli("serve", "--port", "99999", cwd=project))


def test_serve_on_a_busy_port_is_one_line(project: Path) -> None:
    (project / "site").mkdir()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli("serve", "--port", str(port), cwd=project, timeout=60)
    assert result.code == 3
    error = one_line_error(result)
    assert f"cannot serve on 127.0.0.1:{port}" in error and "pick another with --port" in error


def test_read_only_database_fails_at_once_in_one_line(project: Path) -> None:
    """The database's folder is a read-only mount (root ignores file modes, not a read-only mount)."""
    folder = project / "results"
    folder.mkdir()
    Store(folder / "h.sqlite")
    bwrap = shutil.which("bwrap")
    assert bwrap, "bubblewrap is needed (apt-get install bubblewrap)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([bwrap, "--bind", "/", "/", "--ro-bind", str(folder), str(folder), "--dev", "/dev",
                           "--proc", "/proc", "--chdir", str(project), "--", sys.executable, "-m", "harness.cli",
                           "run", "unigram", "--db", str(folder / "h.sqlite"), "--sandbox", "none",
                           "--data-dir", str(project / "no-data-needed")],
                          env=env, capture_output=True, text=True, timeout=120)
    result = CliResult(done.returncode, done.stdout, done.stderr)
    assert result.code == 3, result.stderr
    error = one_line_error(result)
    assert "read-only" in error and "pass another --db" in error


def test_missing_driver_names_the_extra_and_no_password_is_printed(project: Path) -> None:
    url = "postgresql+psycopg2://alice:hunter2@127.0.0.1:9/results"
    for command in (["results"], ["show", "1"], ["site"]):
        result = run_cli(*command, "--db", url, cwd=project)
        assert result.code == 3, result.stderr
        error = one_line_error(result)
        assert "pip install -e '.[postgres]'" in error and "alice:***@127.0.0.1" in error
        assert "hunter2" not in result.stdout + result.stderr


def test_tracks_of_the_config_decide_what_runs(project: Path) -> None:
    (project / "competition.toml").write_text('[competition]\ntracks = ["mlm"]\n')
    result = run_cli("run", "unigram", cwd=project)
    assert result.code == 3
    assert "skipped unigram: its track 'causal' is not in the competition's tracks (mlm)" in result.stderr
    assert "none of the entries is in the competition's tracks (mlm)" in one_line_error(result)
    (project / "competition.toml").write_text('[competition]\ntracks = ["causal", "speech"]\n')
    result = run_cli("run", "unigram", cwd=project)
    assert result.code == 2 and "tracks must list some of causal, mlm" in one_line_error(result)


def finished_runs(db: Path) -> list[int]:
    """Two entries, one ok run each, written as the harness writes them."""
    store = Store(db)
    ids = []
    for entry, ppl in (("alpha", 100.0), ("bravo", 150.0)):
        run_id = store.start_run(entry=entry, entry_kind="submission", entry_path=f"/{entry}.py",
                                 source_hash=entry * 8, source="x = 1\n", track="causal", division="cpu",
                                 hparams={}, hparam_overrides={}, seed=0, device="cpu", budget_seconds=600,
                                 memory_limit_bytes=2**33, eval_protocol={}, data_checksums={}, harness_version="0")
        store.update_run(run_id, status="ok", valid_ppl=ppl, test_ppl=ppl, valid_tokens=73_760,
                         test_tokens=82_430, ended_at=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc))
        ids.append(run_id)
    return ids


def test_disqualify_takes_a_run_off_the_board_with_its_reason(project: Path) -> None:
    db = project / "h.sqlite"
    alpha, _ = finished_runs(db)
    done = run_cli("disqualify", str(alpha), "--reason", "trained on the test split", "--db", str(db), cwd=project)
    assert done.code == 0 and f"run {alpha} disqualified" in done.stdout, done.stderr
    runs = json.loads(run_cli("results", "--runs", "--format", "json", "--db", str(db), cwd=project).stdout)
    row = next(r for r in runs if r["id"] == alpha)
    assert (row["status"], row["failure"]) == ("invalid", "disqualified")
    assert row["reason"] == "disqualified by the organiser: trained on the test split"
    ranked, not_ranked = run_cli("results", "--db", str(db), cwd=project).stdout.split("== not ranked")
    assert "bravo" in ranked and "alpha" not in ranked
    assert "alpha" in not_ranked and "disqualified" in not_ranked and "trained on the test split" in not_ranked
    site = run_cli("site", "--db", str(db), "--out", str(project / "site"), cwd=project)
    assert site.code == 0, site.stderr
    index = (project / "site" / "index.html").read_text()
    board, failures = index.split('<section class="failures">')
    assert "entries/alpha.html" not in board and "entries/bravo.html" in board
    assert "disqualified" in failures and "trained on the test split" in failures


def test_disqualify_refuses_an_unknown_run_or_an_empty_reason(project: Path) -> None:
    db = project / "h.sqlite"
    finished_runs(db)
    unknown = run_cli("disqualify", "999", "--reason", "x", "--db", str(db), cwd=project)
    assert unknown.code == 3 and "no run 999" in one_line_error(unknown)
    empty = run_cli("disqualify", "1", "--reason", " ", "--db", str(db), cwd=project)
    assert empty.code == 2 and "--reason must say why" in one_line_error(empty)
    store = Store(db, keep_alive=False)
    running = store.start_run(entry="charlie", entry_path="/charlie.py", source_hash="c" * 64, source="x = 1\n",
                              seed=0, device="cpu", budget_seconds=600, memory_limit_bytes=2**33, harness_version="0")
    in_flight = run_cli("disqualify", str(running), "--reason", "x", "--db", str(db), cwd=project)
    assert in_flight.code == 3 and "still running" in one_line_error(in_flight)
    assert store.get_run(running).status == "running"  # its driver can still record its result
