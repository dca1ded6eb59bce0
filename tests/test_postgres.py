"""The results database on a real PostgreSQL server (tests/pg_server.py, started once per session):
schema creation and in-place upgrades, 64-bit counts, concurrent claims, leases, read-only readers,
and the `harness results`, `show` and `site` commands on a postgresql+psycopg:// URL.

If the server cannot start these tests fail with the reason; they never skip."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from benchmarks._synthetic import synthetic_database
from harness.errors import StoreError
from harness.store import SCHEMA_VERSION, Store
from tests.conftest import make_project, run_cli
from tests.pg_server import PASSWORD
from tests.test_store import (
    RUN, assert_a_lost_lease_refuses_late_writes, assert_big_counts_round_trip, assert_exactly_one_claim_per_key, assert_leases_expire_unless_renewed,
    assert_store_keeps_claims_alive, claim_race, database_at_version, schema_differences,
)


@pytest.fixture
def pg_db(pg_server) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.new_database()


def column_types(store: Store, table: str) -> dict[str, str]:
    return {c["name"]: str(c["type"]) for c in inspect(store.engine).get_columns(table)}


def test_a_new_database_gets_the_current_schema(pg_url: str) -> None:
    store = Store(pg_url)
    assert schema_differences(store) == []  # column types compared too, on PostgreSQL
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == f"{SCHEMA_VERSION:04d}"
    assert column_types(store, "runs")["memory_limit_bytes"] == "BIGINT"


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_database_is_upgraded_in_place_keeping_its_runs(pg_db: str, version: int) -> None:
    database_at_version(pg_db, version)
    with Store(pg_db, read_only=True).engine.connect() as connection:  # a reader's open upgrades it too
        assert connection.execute(text("SELECT value FROM harness_meta")).scalar() == str(SCHEMA_VERSION)
    store = Store(pg_db)
    assert schema_differences(store) == []
    assert column_types(store, "curve_points")["tokens"] == "BIGINT"
    assert_big_counts_round_trip(store)


def test_a_version_2_database_with_runs_keeps_them_and_only_its_newest_running_row_per_key(pg_db: str) -> None:
    database_at_version(pg_db, 2)
    engine = create_engine(pg_db)  # no Store yet: version 2 rows written with plain SQL
    columns = ("entry, entry_kind, entry_path, source_hash, source, track, hparams, hparam_overrides, seed, device, "
               "budget_seconds, memory_limit_bytes, eval_protocol, data_checksums, status, checks, harness_version, "
               "environment, started_at, run_key, test_ppl")
    values = ("'e', 'baseline', '/e.py', 'h', 'src', 'causal', '{}', '{}', 0, 'cpu', 600, 1, '{}', '{}', :status, "
              "'{}', '0.1.0', '{}', now(), :key, :ppl")
    with engine.begin() as connection:
        for status, key, ppl in (("ok", "a", 639.3), ("running", "b", None), ("running", "b", None)):
            connection.execute(text(f"INSERT INTO runs ({columns}) VALUES ({values})"),
                               {"status": status, "key": key, "ppl": ppl})
    engine.dispose()
    store = Store(pg_db)
    runs = store.runs()
    assert [(r.run_key, r.status) for r in runs] == [("a", "ok"), ("b", "interrupted"), ("b", "running")]
    assert runs[0].test_ppl == 639.3 and "older harness" in runs[1].reason


def test_counts_past_2_to_the_31_round_trip(pg_url: str) -> None:
    assert_big_counts_round_trip(Store(pg_url))


def test_a_newer_database_is_refused(pg_db: str) -> None:
    store = Store(pg_db)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE harness_meta SET value = :v"), {"v": str(SCHEMA_VERSION + 1)})
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}; this harness reads version"):
        Store(pg_db)
    with pytest.raises(StoreError, match="cannot convert it"):
        Store(pg_db, read_only=True)


def test_processes_claiming_the_same_keys_at_once_run_each_exactly_once(pg_db: str, tmp_path: Path) -> None:
    assert_exactly_one_claim_per_key(pg_db, claim_race(pg_db, tmp_path, processes=4))


def test_an_expired_lease_is_interrupted_and_heartbeats_keep_one_alive(pg_db: str) -> None:
    assert_leases_expire_unless_renewed(pg_db)


def test_a_driver_that_lost_its_lease_cannot_write_over_the_takeover(pg_db: str) -> None:
    assert_a_lost_lease_refuses_late_writes(pg_db)


def test_a_store_keeps_its_own_claims_alive(pg_db: str) -> None:
    assert_store_keeps_claims_alive(pg_db)


def test_a_read_only_store_cannot_write(pg_db: str) -> None:
    run_id = Store(pg_db).start_run(**RUN)
    reader = Store(pg_db, read_only=True)
    with pytest.raises(StoreError, match="read-only"):
        reader.update_run(run_id, reason="no")
    with pytest.raises(Exception, match="read-only transaction"):
        with reader.session() as session:  # even bypassing the Store's methods
            session.execute(text("UPDATE runs SET reason = 'no'"))
    assert reader.get_run(run_id).reason is None


def test_results_show_and_site_on_a_postgres_url_match_sqlite(pg_db: str, tmp_path: Path) -> None:
    """The same synthetic competition in SQLite and in PostgreSQL: the CLI ranks it identically."""
    sqlite_db = str(tmp_path / "same.sqlite")
    for db in (sqlite_db, pg_db):
        synthetic_database(db, entries=12, runs_per_entry=3)
    for args in (["results", "--phase", "final", "--format", "csv"], ["results", "--runs", "--format", "csv"]):
        on_sqlite = run_cli(*args, "--db", sqlite_db, cwd=tmp_path)
        on_postgres = run_cli(*args, "--db", pg_db, cwd=tmp_path)
        assert on_sqlite.code == 0 and on_postgres.code == 0, on_postgres.stderr
        assert on_postgres.stdout == on_sqlite.stdout and on_postgres.stdout.count("\n") > 12
    shown = run_cli("show", "5", "--db", pg_db, cwd=tmp_path)
    assert shown.code == 0 and "entry_001" in shown.stdout, shown.stderr
    site = run_cli("site", "--db", pg_db, "--out", str(tmp_path / "site"), cwd=tmp_path)
    assert site.code == 0, site.stderr
    assert "entry_011" in (tmp_path / "site" / "index.html").read_text()


def test_passwords_never_appear_in_messages(pg_db: str, tmp_path: Path) -> None:
    Store(pg_db)
    missing = run_cli("show", "999", "--db", pg_db, cwd=tmp_path)
    assert missing.code == 3 and "no run 999 in postgresql+psycopg://harness:***@127.0.0.1" in missing.stderr
    wrong = pg_db.replace(PASSWORD, "Wr0ng-Pa55word")
    refused = run_cli("results", "--db", wrong, cwd=tmp_path)
    assert refused.code == 3 and "password authentication failed" in refused.stderr, refused.stderr
    for result in (missing, refused):
        assert PASSWORD not in result.stderr + result.stdout and "Wr0ng-Pa55word" not in result.stderr


@pytest.mark.slow
def test_harness_run_claims_records_and_reuses_in_postgres(pg_db: str, tmp_path: Path, env: dict) -> None:
    project = make_project(tmp_path)
    first = run_cli("run", "unigram", "--db", pg_db, "--no-site", cwd=project, env=env)
    assert first.code == 0, first.stderr
    again = run_cli("run", "unigram", "--db", pg_db, "--no-site", cwd=project, env=env)
    assert again.code == 0 and "reused run 1" in again.stderr, again.stderr
    for result in (first, again):
        assert PASSWORD not in result.stdout + result.stderr
    [run] = Store(pg_db, read_only=True).runs()
    assert run.status == "ok" and round(run.test_ppl, 2) == 639.30 and run.test_tokens == 82_430
    assert run.lease_holder and run.memory_limit_bytes == 8 * 2**30 and run.ended_at.tzinfo is not None


def test_text_and_values_a_participant_controls_cannot_make_the_database_refuse_a_run(pg_db: str) -> None:
    """A NUL in a printed log or a reason, a NaN in reported hyper-parameters, a 300-character name:
    PostgreSQL refuses each as it is; the store keeps the row (NUL dropped, NaN as null, name cut)."""
    from harness.errors import RunStatus

    store = Store(pg_db)
    run_id = store.start_run(**{**RUN, "display_name": "A" * 300})
    store.finish_run(run_id, RunStatus.FAILED, log_tail="x\x00y", reason="a\x00b",
                     hparams={"lr": float("nan"), "name": "n\x00"})
    run = store.get_run(run_id)
    assert run.status == "failed" and run.log_tail == "xy" and run.reason == "ab"
    assert run.hparams == {"lr": None, "name": "n"} and run.display_name == "A" * 200
