"""The results database: a real SQLite file, WAL, runs and curves, abandoned runs."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import RunStatus, StoreError
from harness.store import SCHEMA_VERSION, Store, database_url

RUN = dict(entry="e", entry_path="/x/e.py", source_hash="h" * 64, source="print(1)", seed=0, device="cpu",
           budget_seconds=10.0, memory_limit_bytes=2**30, harness_version="0")


def test_runs_and_curve_points_round_trip_in_a_wal_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "results.sqlite"
    store = Store(db)
    run_id = store.start_run(**RUN)
    store.add_curve_point(run_id, train_seconds=1.0, steps=10, tokens=100, valid_ppl=500.0)
    store.finish_run(run_id, RunStatus.OK, test_ppl=123.4, test_tokens=82_430)
    reopened = Store(db).get_run(run_id)
    assert reopened is not None and reopened.status == "ok" and reopened.test_tokens == 82_430
    assert [p.valid_ppl for p in reopened.curve] == [500.0]
    assert reopened.ended_at is not None and reopened.runner_pid is not None
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_runs_left_running_by_a_dead_harness_become_interrupted(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = store.start_run(**RUN)
    store.update_run(stale, runner_pid=int(dead.stdout))
    live = store.start_run(**RUN)  # owned by this (living) process
    assert store.mark_abandoned() == 1
    assert store.get_run(stale).status == RunStatus.INTERRUPTED.value
    assert store.get_run(live).status == RunStatus.RUNNING.value


def test_a_database_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    Store(db)
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE harness_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match="schema version"):
        Store(db)


def test_paths_become_sqlite_urls_and_urls_pass_through(tmp_path: Path) -> None:
    assert database_url(tmp_path / "a.db") == f"sqlite:///{tmp_path / 'a.db'}"
    assert database_url("postgresql://u@h/db") == "postgresql://u@h/db"
    with pytest.raises(StoreError, match="cannot open the results database"):
        Store("nosuchdialect://x")
