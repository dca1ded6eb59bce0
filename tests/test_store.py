"""The results database on a real SQLite file: WAL, runs and curves, schema versions and upgrades,
claims, leases and heartbeats, read-only readers beside a writer (real processes), URL masking.

The helpers `claim_race` and `schema_differences` are shared with tests/test_postgres.py, which runs
the same checks against a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from harness.errors import LeaseLost, RunStatus, StoreError
from harness.migrations import head_version
from harness.store import SCHEMA_VERSION, Base, Run, Store, database_url, redact_url
from tests.conftest import REPO

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
    assert database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"  # psycopg 3, not psycopg2
    assert database_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    with pytest.raises(StoreError, match="cannot open the results database"):
        Store("nosuchdialect://x")
    with pytest.raises(StoreError, match="'mysql' databases are not supported"):
        Store("mysql://u@h/db")


def schema_differences(store: Store) -> list[Any]:
    """What Alembic's autogenerate finds between the database's schema and the ORM models.

    On SQLite, INTEGER and BIGINT are the same 8-byte storage and the migrations do not rewrite
    tables for them, so column types are compared on PostgreSQL only."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": connection.dialect.name != "sqlite"})
        return compare_metadata(context, Base.metadata)


def test_the_model_and_the_newest_migration_are_the_same_version(tmp_path: Path) -> None:
    assert head_version() == SCHEMA_VERSION
    store = Store(tmp_path / "fresh.sqlite")
    assert schema_differences(store) == []
    with sqlite3.connect(tmp_path / "fresh.sqlite") as raw:
        assert raw.execute("SELECT version_num FROM alembic_version").fetchone()[0] == f"{SCHEMA_VERSION:04d}"


def database_at_version(db: str, version: int) -> None:
    """A database as harness schema `version` wrote it: the migrations up to that version only, and
    no alembic_version table (the harness versions before Alembic only had harness_meta)."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    from harness.migrations import MIGRATIONS_DIR
    from harness.store import database_url

    engine = create_engine(database_url(db))
    with engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        command.upgrade(config, f"{version:04d}")
        connection.execute(text("DROP TABLE alembic_version"))
    engine.dispose()


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_database_is_upgraded_to_exactly_the_current_schema(tmp_path: Path, version: int) -> None:
    db = str(tmp_path / f"v{version}.sqlite")
    database_at_version(db, version)
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT value FROM harness_meta").fetchone()[0] == str(version)
    store = Store(db)
    assert schema_differences(store) == []
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT value FROM harness_meta").fetchone()[0] == str(SCHEMA_VERSION)
    assert store.claim_run("k", frozenset({"ok"}), **RUN)[0] == "new"


def test_counts_past_2_to_the_31_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "big.sqlite")
    assert_big_counts_round_trip(store)


def assert_big_counts_round_trip(store: Store) -> None:
    big = 42_949_672_960  # the 40 GiB CUDA memory default
    run_id = store.start_run(**{**RUN, "memory_limit_bytes": big})
    store.add_curve_point(run_id, train_seconds=1.0, steps=big + 1, tokens=big + 2, valid_ppl=99.0)
    store.finish_run(run_id, RunStatus.OK, peak_gpu_memory_bytes=big + 3, tokens_trained=big + 4, param_count=big + 5)
    run = Store(store.url.render_as_string(hide_password=False), read_only=True).get_run(run_id)
    assert (run.memory_limit_bytes, run.peak_gpu_memory_bytes, run.tokens_trained, run.param_count) == (
        big, big + 3, big + 4, big + 5)
    assert (run.curve[0].steps, run.curve[0].tokens) == (big + 1, big + 2)


def test_claims_reuse_finished_runs_leave_running_ones_and_run_the_rest(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite")
    other = Store(tmp_path / "c.sqlite", holder="another-driver")
    action, run_id = store.claim_run("k1", frozenset({"ok"}), **RUN)
    assert action == "new" and store.get_run(run_id).lease_holder == store.holder
    action, busy = other.claim_run("k1", frozenset({"ok"}), **RUN)
    assert action == "busy" and busy.id == run_id
    store.finish_run(run_id, RunStatus.OK)
    action, reused = other.claim_run("k1", frozenset({"ok"}), **RUN)
    assert action == "reuse" and reused.id == run_id
    action, forced = other.claim_run("k1", frozenset(), **RUN)  # --force: reuse nothing
    assert action == "new" and forced != run_id
    other.finish_run(forced, RunStatus.FAILED)
    action, retried = store.claim_run("k1", frozenset({"ok"}), **RUN)  # the latest result failed
    assert action == "new" and retried not in (run_id, forced)


def test_an_expired_lease_is_interrupted_and_heartbeats_keep_one_alive(tmp_path: Path) -> None:
    assert_leases_expire_unless_renewed(tmp_path / "lease.sqlite")


def assert_leases_expire_unless_renewed(db: str | Path) -> None:
    """Driver A holds two runs and heartbeats itself (its process stays alive, so only the lease can
    end them): the one it renews stays running, the other is interrupted by driver B once its lease
    has expired."""
    driver_a = Store(db, holder="driver-a", lease_seconds=0.6, keep_alive=False)
    driver_b = Store(db, holder="driver-b")
    _, renewed = driver_a.claim_run("renewed", frozenset({"ok"}), **RUN)
    _, abandoned = driver_a.claim_run("abandoned", frozenset({"ok"}), **RUN)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert driver_a.heartbeat(renewed)
        time.sleep(0.1)
    assert not driver_b.heartbeat(renewed)  # not its claim
    assert driver_b.mark_abandoned() == 1
    lost = driver_b.get_run(abandoned)
    assert lost.status == "interrupted" and "lease expired" in lost.reason and lost.ended_at is not None
    assert driver_b.get_run(renewed).status == "running"
    assert not driver_a.heartbeat(abandoned)  # A learns that it lost the claim
    action, _ = driver_b.claim_run("abandoned", frozenset({"ok"}), **RUN)
    assert action == "new"
    time.sleep(0.8)  # A stops renewing: B's claim of the key takes over
    action, taken = driver_b.claim_run("renewed", frozenset({"ok"}), **RUN)
    assert action == "new" and driver_b.get_run(renewed).status == "interrupted"


def test_a_driver_that_lost_its_lease_cannot_write_over_the_takeover(tmp_path: Path) -> None:
    assert_a_lost_lease_refuses_late_writes(tmp_path / "late.sqlite")


def assert_a_lost_lease_refuses_late_writes(db: str | Path) -> None:
    """Driver A stalls past its lease; B turns the run `interrupted` and claims the key again. A's
    late curve point, update and result are refused (LeaseLost, naming the row's state), and both
    rows stay as B's decisions left them."""
    driver_a = Store(db, holder="driver-a", lease_seconds=0.3, keep_alive=False)
    driver_b = Store(db, holder="driver-b")
    _, late = driver_a.claim_run("key", frozenset({"ok"}), **RUN)
    driver_a.add_curve_point(late, train_seconds=1.0, steps=1, tokens=10, valid_ppl=900.0)  # still held
    time.sleep(0.5)
    action, retry = driver_b.claim_run("key", frozenset({"ok"}), **RUN)
    assert action == "new" and retry != late
    with pytest.raises(LeaseLost, match=r"it is interrupted \(.*lease expired"):
        driver_a.finish_run(late, RunStatus.OK, test_ppl=1.0)
    with pytest.raises(LeaseLost):
        driver_a.add_curve_point(late, train_seconds=2.0, steps=2, tokens=20, valid_ppl=1.0)
    with pytest.raises(LeaseLost):
        driver_a.update_held(late, environment={"forged": True})
    with pytest.raises(LeaseLost):
        driver_a.renew_held(retry)  # B's claim is not A's to touch either
    with pytest.raises(LeaseLost):
        driver_a.finish_run(retry, RunStatus.FAILED)
    after = driver_b.get_run(late)
    assert (after.status, after.test_ppl) == ("interrupted", None) and "forged" not in after.environment
    assert [p.valid_ppl for p in after.curve] == [900.0]
    assert driver_b.get_run(retry).status == "running"
    driver_b.finish_run(retry, RunStatus.OK, test_ppl=120.0)
    assert driver_b.reusable("key", frozenset({"ok"})).id == retry
    driver_a.update_run(late, reason="an organiser's note")  # an unconditional write stays possible


def test_a_store_keeps_its_own_claims_alive_until_they_finish_or_it_closes(tmp_path: Path) -> None:
    assert_store_keeps_claims_alive(tmp_path / "alive.sqlite")


def assert_store_keeps_claims_alive(db: str | Path) -> None:
    driver = Store(db, holder="driver", lease_seconds=0.6)  # renews from its keep-alive thread
    other = Store(db, holder="other")
    _, finished = driver.claim_run("finished", frozenset({"ok"}), **RUN)
    _, held = driver.claim_run("held", frozenset({"ok"}), **RUN)
    driver.finish_run(finished, RunStatus.OK)
    time.sleep(1.8)  # three leases long, no explicit heartbeat
    assert other.mark_abandoned() == 0
    assert [other.get_run(i).status for i in (finished, held)] == ["ok", "running"]
    driver.close()  # as if the driver were gone: nothing renews the claim any more
    time.sleep(1.0)
    assert other.mark_abandoned() == 1 and other.get_run(held).status == "interrupted"


CLAIMER = """
import json, sys, time
from pathlib import Path
from harness.store import Store
url, keys, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
fields = json.loads(sys.argv[4])
store = Store(url)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.002)
actions = [store.claim_run(f"key-{k}", frozenset({"ok"}), **fields)[0] for k in range(keys)]
print(json.dumps(actions), flush=True)
sys.stdin.read()  # stay alive (a dead claimer's runs would be free to take) until the parent says so
"""


def claim_race(db: str, folder: Path, processes: int = 3, keys: int = 40) -> list[list[str]]:
    """`processes` real processes claim the same `keys` run keys at the same moment; return each
    one's actions, in key order."""
    Store(db)  # create the schema first, so the race is about claims only
    go = folder / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    claimers = [subprocess.Popen([sys.executable, "-c", CLAIMER, db, str(keys), str(go), json.dumps(RUN)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
                for _ in range(processes)]
    try:
        for claimer in claimers:
            assert claimer.stdout.readline().strip() == "ready"
        go.touch()
        return [json.loads(claimer.stdout.readline()) for claimer in claimers]
    finally:
        for claimer in claimers:
            claimer.stdin.close()
            claimer.wait(timeout=60)


def assert_exactly_one_claim_per_key(db: str, actions: list[list[str]]) -> None:
    for key, per_process in enumerate(zip(*actions)):
        assert sorted(per_process) == ["busy"] * (len(per_process) - 1) + ["new"], (key, per_process)
    with Store(db, read_only=True).session() as session:
        rows = session.execute(select(Run.run_key, Run.status)).all()
    assert sorted(rows) == sorted((f"key-{k}", "running") for k in range(len(actions[0])))


def test_processes_claiming_the_same_keys_at_once_run_each_exactly_once(tmp_path: Path) -> None:
    db = str(tmp_path / "race.sqlite")
    assert_exactly_one_claim_per_key(db, claim_race(db, tmp_path))


READER = """
import sys, time
from sqlalchemy import select
from harness.errors import StoreError
from harness.store import Run, Store
store = Store(sys.argv[1], read_only=True)
try:
    store.update_run(1, reason="a reader must not write")
except StoreError:
    pass
else:
    raise SystemExit("the read-only store wrote")
with store.session() as session:  # one read transaction, held open while the writer writes
    count = len(session.execute(select(Run.id)).all())
    print("reading", count, flush=True)
    time.sleep(float(sys.argv[2]))
    print("still sees", len(session.execute(select(Run.id)).all()), flush=True)
"""


def test_a_reader_holding_a_transaction_never_delays_a_writer(tmp_path: Path) -> None:
    """`harness results` (a read-only store) in one process, a run writing in another: the reader
    keeps a read transaction open for 4 s; every write meanwhile completes at once."""
    db = tmp_path / "busy.sqlite"
    writer = Store(db)
    run_id = writer.start_run(**RUN)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(db), "4"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert reader.stdout.readline().split() == ["reading", "1"], reader.stderr.read()
    slowest = 0.0
    for step in range(20):
        started = time.monotonic()
        writer.add_curve_point(run_id, train_seconds=float(step), steps=step, tokens=step, valid_ppl=100.0)
        writer.start_run(**RUN)
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    assert slowest < 1.0, f"a write waited {slowest:.1f} s for the reader"
    assert reader.poll() is None, "the reader ended before the writes: the test proved nothing"
    out, err = reader.communicate(timeout=30)
    assert reader.returncode == 0, err
    assert out.split() == ["still", "sees", "1"]  # its snapshot: one consistent view while it reads
    assert len(writer.get_run(run_id).curve) == 20


def test_passwords_are_masked_wherever_a_url_is_shown() -> None:
    assert redact_url("postgresql+psycopg://ada:pw0rd@db.example:5432/ptb") == \
        "postgresql+psycopg://ada:***@db.example:5432/ptb"
    assert redact_url("postgresql://ada@h/ptb?password=pw0rd&sslmode=require") == \
        "postgresql://ada@h/ptb?password=***&sslmode=require"
    assert redact_url("results/harness.sqlite") == "results/harness.sqlite"
    with pytest.raises(StoreError) as refused:
        Store("mysql://ada:pw0rd@h/ptb")
    assert "pw0rd" not in str(refused.value) and "ada:***@h" in str(refused.value)


def test_a_missing_postgres_driver_names_the_extra_to_install(tmp_path: Path) -> None:
    """As on a machine without the `postgres` extra: psycopg cannot be imported."""
    blocked = ("import sys; sys.modules['psycopg'] = None\n"
               "from harness.errors import StoreError\nfrom harness.store import Store\n"
               "try:\n    Store(sys.argv[1])\nexcept StoreError as exc:\n    sys.exit(f'error: {exc}')\n")
    done = subprocess.run([sys.executable, "-c", blocked, "postgresql://ada:pw0rd@127.0.0.1:1/x"],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1, done.stderr
    assert "pip install -e '.[postgres]'" in done.stderr and "pw0rd" not in done.stderr


def test_a_fault_of_the_harness_is_never_reused(tmp_path: Path) -> None:
    """A failed run the harness itself caused is not the entry's result: the key runs again, even
    under the default reuse (which reuses the entry's own failures)."""
    store = Store(tmp_path / "r.sqlite")
    reuse = frozenset({"ok", "failed"})
    _, first = store.claim_run("k", reuse, **RUN)
    store.finish_run(first, RunStatus.FAILED, failure="runtime_error", reason="the entry raised")
    assert store.claim_run("k", reuse, **RUN)[0] == "reuse"
    _, second = store.claim_run("k", frozenset(), **RUN)
    store.finish_run(second, RunStatus.FAILED, failure="harness_error", reason="the harness broke")
    assert store.reusable("k", reuse) is None and store.claim_run("k", reuse, **RUN)[0] == "new"


def test_text_a_participant_wrote_is_stored_whatever_it_holds(tmp_path: Path) -> None:
    """A lone surrogate (`authors = "x \\ud800"` in a source) or a NUL cannot be written as UTF-8: it
    is replaced, and the claim and the result of that run go in like any other."""
    store = Store(tmp_path / "r.sqlite")
    _, run_id = store.claim_run("k", frozenset(), **{**RUN, "authors": "ada \ud800 lovelace\x00"})
    store.finish_run(run_id, RunStatus.FAILED, failure="runtime_error", reason="it said \udcff")
    (run,) = store.runs()
    assert run.authors == "ada \ufffd\ufffd\ufffd lovelace" and run.reason == "it said \ufffd\ufffd\ufffd"


def test_a_claim_made_for_a_named_holder_is_finished_by_that_holder(tmp_path: Path) -> None:
    """A Store may claim for another holder id (a driver acting for a worker); the conditional writes
    check that holder, not the Store's own id, and a write does not shorten the claim's lease."""
    store = Store(tmp_path / "named.sqlite", keep_alive=False)
    _, run_id = store.claim_run("key", frozenset({"ok"}), holder="worker-7", lease_seconds=3600, **RUN)
    expires = store.get_run(run_id).lease_expires
    store.add_curve_point(run_id, holder="worker-7", train_seconds=1.0, steps=1, tokens=10, valid_ppl=500.0)
    store.update_held(run_id, "worker-7", environment={"node": "n7"})
    assert store.get_run(run_id).lease_expires == expires
    with pytest.raises(LeaseLost, match="no longer held by this harness .* it is running"):
        store.finish_run(run_id, RunStatus.OK)  # the Store's own id does not hold it
    store.finish_run(run_id, RunStatus.OK, holder="worker-7", test_ppl=99.0)
    assert store.get_run(run_id).status == "ok"
