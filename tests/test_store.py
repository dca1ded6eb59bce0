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


def test_a_database_of_a_newer_schema_version_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "new.sqlite"
    Store(db)
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE harness_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}; this harness reads version"):
        Store(db)


VERSION_1_SCHEMA = """
CREATE TABLE harness_meta (key VARCHAR(64) PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO harness_meta VALUES ('schema_version', '1');
CREATE TABLE runs (
  id INTEGER PRIMARY KEY, entry VARCHAR(200) NOT NULL, entry_kind VARCHAR(20) NOT NULL,
  entry_path TEXT NOT NULL, source_hash VARCHAR(64) NOT NULL, source TEXT NOT NULL,
  display_name VARCHAR(200), authors TEXT, description TEXT, track VARCHAR(40) NOT NULL,
  hparams JSON NOT NULL, hparam_overrides JSON NOT NULL, seed INTEGER NOT NULL, device VARCHAR(20) NOT NULL,
  device_name VARCHAR(200), threads INTEGER, budget_seconds FLOAT NOT NULL, memory_limit_bytes INTEGER NOT NULL,
  eval_protocol JSON NOT NULL, data_checksums JSON NOT NULL, status VARCHAR(20) NOT NULL, failure VARCHAR(40),
  reason TEXT, traceback TEXT, log_tail TEXT, checks JSON NOT NULL, valid_ppl FLOAT, valid_tokens INTEGER,
  valid_nll_sum FLOAT, test_ppl FLOAT, test_tokens INTEGER, test_nll_sum FLOAT, steps INTEGER, epochs FLOAT,
  tokens_trained INTEGER, train_seconds FLOAT, stop_reason VARCHAR(40), peak_memory_bytes INTEGER,
  peak_gpu_memory_bytes INTEGER, param_count INTEGER, harness_version VARCHAR(40) NOT NULL,
  torch_version VARCHAR(40), python_version VARCHAR(40), platform TEXT, environment JSON NOT NULL,
  started_at DATETIME NOT NULL, ended_at DATETIME, runner_host VARCHAR(200), runner_pid INTEGER
);
CREATE TABLE curve_points (
  id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
  train_seconds FLOAT NOT NULL, steps INTEGER NOT NULL, tokens INTEGER NOT NULL, valid_ppl FLOAT NOT NULL
);
INSERT INTO runs VALUES (1, 'old', 'baseline', '/x.py', 'h', 'src', NULL, NULL, NULL, 'causal', '{}', '{}', 0,
  'cpu', NULL, 2, 600, 1, '{}', '{}', 'ok', NULL, NULL, NULL, NULL, '{}', 687.0, 73760, 1.0, 639.3, 82430, 1.0,
  1, 1.0, 1, 1.0, 'max_epochs', 1, NULL, 0, '0.1.0', NULL, NULL, NULL, '{}', '2026-11-30 08:00:00', NULL, NULL, NULL);
"""


def test_a_version_1_database_is_upgraded_in_place_keeping_its_runs(tmp_path: Path) -> None:
    db = tmp_path / "v1.sqlite"
    with sqlite3.connect(db) as raw:
        raw.executescript(VERSION_1_SCHEMA)
    store = Store(db)
    old = store.get_run(1)
    assert old is not None and old.test_ppl == 639.3 and old.test_accuracy is None
    new = store.start_run(**RUN)
    store.finish_run(new, RunStatus.OK, test_accuracy=0.25)
    assert store.get_run(new).test_accuracy == 0.25
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT value FROM harness_meta").fetchone()[0] == str(SCHEMA_VERSION)


def test_paths_become_sqlite_urls_and_urls_pass_through(tmp_path: Path) -> None:
    assert database_url(tmp_path / "a.db") == f"sqlite:///{tmp_path / 'a.db'}"
    assert database_url("postgresql://u@h/db") == "postgresql://u@h/db"
    with pytest.raises(StoreError, match="cannot open the results database"):
        Store("nosuchdialect://x")
