"""Statistics and rankings, checked against direct scipy / numpy computations on known data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from harness.errors import RunStatus
from harness.budget import RunLimits
from harness.config import load_competition
from harness.entries import EntrySource
from harness.provenance import configuration_digest
from harness.results import (
    bootstrap_weights, classified_runs, configuration_parts, failures, leaderboard, load_references, mean_interval,
    pairwise, prob_better, runs_frame,
)
from harness.store import Store
from harness.supervisor import RunRequest

BASE = dict(entry_path="/x.py", source="", device="cpu", budget_seconds=600.0, memory_limit_bytes=2**33,
            harness_version="0", track="causal", division="cpu", config={"options": {"evals": 10}})


def add_run(store: Store, entry: str, seed: int, sentences: np.ndarray | None, status: str = "ok",
            source_hash: str = "a" * 64, **fields: object) -> int:
    run_id = store.start_run(entry=entry, seed=seed, source_hash=source_hash, **BASE)
    extra = dict(fields)
    if sentences is not None:
        total = float(sentences.sum())
        extra.update(test_sentence_nll=sentences.astype("<f4").tobytes(),
                     valid_sentence_nll=sentences.astype("<f4").tobytes(),
                     test_ppl=float(np.exp(total / 1000)), valid_ppl=float(np.exp(total / 1000)),
                     test_tokens=1000, valid_tokens=1000)
    store.finish_run(run_id, RunStatus(status), **extra)
    return run_id


def test_mean_interval_matches_scipy() -> None:
    values = np.array([120.1, 118.7, 121.9, 119.4])
    mean, std, low, high = mean_interval(values)
    expected = stats.t.interval(0.95, 3, loc=values.mean(), scale=stats.sem(values))
    assert mean == pytest.approx(values.mean())
    assert std == pytest.approx(np.std(values, ddof=1))
    assert (low, high) == pytest.approx(expected)
    single = mean_interval(np.array([5.0]))
    assert single[0] == 5.0 and np.isnan(single[2])


def test_bootstrap_probability_matches_a_direct_resampling() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(5.0, 1.0, 300)
    b = a + rng.normal(0.05, 1.0, 300)  # b slightly worse on average
    weights = bootstrap_weights(300)
    direct = np.mean([(np.repeat(a - b, counts.astype(int))).sum() < 0 for counts in weights])
    assert prob_better(a, b) == pytest.approx(direct)
    assert weights.sum(axis=1) == pytest.approx(np.full(weights.shape[0], 300))
    assert prob_better(a, a + 1.0) == 1.0 and prob_better(a + 1.0, a) == 0.0


def test_paired_comparison_reports_scipy_t_test(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite")
    rng = np.random.default_rng(2)
    a, b = rng.normal(4, 1, 200), rng.normal(4.2, 1, 200)
    first, second = add_run(store, "a", 0, a), add_run(store, "b", 0, b)
    result = pairwise(store, [first], [second])
    a32, b32 = a.astype("<f4").astype(float), b.astype("<f4").astype(float)
    assert result["t_test_pvalue"] == pytest.approx(stats.ttest_rel(a32, b32).pvalue)
    assert result["mean_nll_difference"] == pytest.approx((a32 - b32).mean())


def test_ranking_orders_entries_marks_ties_and_lists_failures(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite")
    rng = np.random.default_rng(3)
    base = rng.uniform(50, 150, 1000)
    for seed in range(3):
        add_run(store, "best", seed, base - 5 + rng.normal(0, 0.1, 1000))
        add_run(store, "second", seed, base + rng.normal(0, 0.1, 1000))
        add_run(store, "twin", seed, base + rng.normal(0, 0.1, 1000))
    add_run(store, "broken", 0, None, status="failed", failure="runtime_error", reason="train_step raised")
    add_run(store, "edited", 0, base - 50, source_hash="b" * 64)   # an old source...
    add_run(store, "edited", 0, None, status="timeout", source_hash="c" * 64, reason="too slow")  # ...replaced
    (ranking,) = leaderboard(store, phase="final")
    table = ranking.table
    assert list(table["entry"]) == ["best", "second", "twin"] or list(table["entry"]) == ["best", "twin", "second"]
    assert list(table["seeds"]) == [3, 3, 3]
    assert list(table["tied_with_above"]) == [False, False, True]
    assert table.loc[0, "p_better_than_next"] == 1.0
    assert table.loc[0, "test_ci_low"] <= table.loc[0, "test_ppl"] <= table.loc[0, "test_ci_high"]
    failed = failures(store)
    assert sorted(failed["entry"]) == ["broken", "edited"]
    assert set(failed["status"]) == {"failed", "timeout"}


def test_runs_frame_filters(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite")
    add_run(store, "a", 0, None, status="failed")
    add_run(store, "b", 0, np.ones(10))
    assert list(runs_frame(store, status="failed")["entry"]) == ["a"]
    assert list(runs_frame(store, entry="b")["status"]) == ["ok"]
    assert runs_frame(store, track="mlm").empty
    unrecorded = add_run(store, "c", 0, np.ones(10), config=None)  # a run whose cadence nobody recorded
    assert classified_runs(store).set_index("id").loc[unrecorded, "configuration"] == "official"
    recorded = add_run(store, "c", 1, np.ones(10))  # the newest run recorded it: its digest is the official one
    runs = classified_runs(store).set_index("id")
    assert runs.loc[unrecorded, "differs"] == "evals not recorded (official 10)"
    assert list(runs["configuration"]) == ["official", "official", "exploration", "official"]
    assert runs.loc[recorded, "counted"]
    old = add_run(store, "d", 0, np.ones(10), division=None)  # written before runs recorded their division
    assert classified_runs(store).set_index("id").loc[old, "differs"] == "no division recorded"


def test_results_and_show_commands_in_every_format(tmp_path: Path) -> None:
    import json

    import pandas as pd
    from click.testing import CliRunner

    from harness.cli import main

    db = tmp_path / "r.sqlite"
    store = Store(db)
    rng = np.random.default_rng(4)
    for seed in range(2):
        add_run(store, "a", seed, rng.normal(4.0, 1.0, 100))
        add_run(store, "b", seed, rng.normal(5.0, 1.0, 100))
    failed = add_run(store, "c", 0, None, status="failed", failure="runtime_error", reason="setup raised KeyError")
    runner = CliRunner()
    table = runner.invoke(main, ["results", "--db", str(db), "--phase", "final"])
    assert table.exit_code == 0, table.output
    assert table.output.index(" a ") < table.output.index(" b ") and "setup raised KeyError" in table.output
    rows = json.loads(runner.invoke(main, ["results", "--db", str(db), "--format", "json"]).output)
    ranked = [r for r in rows if r["row_type"] == "ranked"]
    assert [r["entry"] for r in ranked] == ["a", "b"] and ranked[0]["seeds"] == 2
    assert all(len(r["config_digest"]) == 64 for r in ranked)
    csv = runner.invoke(main, ["results", "--db", str(db), "--format", "csv", "--entry", "b"]).output
    assert csv.splitlines()[0].startswith("track,division,split,rank,entry") and ",b," in csv.splitlines()[1]
    parquet = tmp_path / "r.parquet"
    assert runner.invoke(main, ["results", "--db", str(db), "--format", "parquet", "-o", str(parquet)]).exit_code == 0
    assert list(pd.read_parquet(parquet).query("row_type == 'ranked'")["entry"]) == ["a", "b"]
    assert runner.invoke(main, ["results", "--db", str(db), "--format", "parquet"]).exit_code == 2
    listed = runner.invoke(main, ["results", "--db", str(db), "--status", "failed"]).output
    assert " c " in listed and " a " not in listed
    shown = runner.invoke(main, ["show", str(failed), "--db", str(db)])
    assert shown.exit_code == 0 and "runtime_error" in shown.output and "setup raised KeyError" in shown.output
    assert runner.invoke(main, ["show", "999", "--db", str(db)]).exit_code == 3
    assert runner.invoke(main, ["results", "--db", str(tmp_path / "none.sqlite")]).exit_code == 3



# --- Official configurations: the rows a real `harness run` writes, straight into a real store ----


def request(tmp_path: Path, budget: float = 600.0, hparams: dict | None = None, source: str = "x = 1\n",
            seed: int = 0, evals: int = 10) -> RunRequest:
    """What `harness run my_lstm [--budget B] [--hparam ...]` asks the supervisor for."""
    import hashlib

    path = tmp_path / "my_lstm.py"
    entry = EntrySource(name="my_lstm", path=path, kind="submission", source=source,
                        source_hash=hashlib.sha256(source.encode()).hexdigest())
    config = {"division": "cpu", "options": {"budget": budget, "memory_bytes": 2**33, "evals": evals}}
    return RunRequest(entry=entry, hparams=hparams or {}, seed=seed, device="cpu", threads=2,
                      limits=RunLimits(seconds=budget, memory_bytes=2**33, evals=evals), division="cpu", config=config)


CHECKSUMS = {"ptb.train.txt": "1" * 64, "ptb.valid.txt": "2" * 64, "ptb.test.txt": "3" * 64}


def record(store: Store, run: RunRequest, ppl: float | None, status: str = "ok", **fields: object) -> int:
    """Start a run as the supervisor does (its row fields and run key), then finish it."""
    run_id = store.start_run(run_key=run.key(CHECKSUMS), **run.row_fields(CHECKSUMS))
    if ppl is not None:
        sentences = np.full(100, np.log(ppl) * 10, dtype="<f4")  # 100 sentences of 10 tokens
        fields.update(valid_ppl=ppl, test_ppl=ppl, valid_tokens=1000, test_tokens=1000, track="causal",
                      valid_sentence_nll=sentences.tobytes(), test_sentence_nll=sentences.tobytes())
    store.finish_run(run_id, RunStatus(status), **fields)
    return run_id


def test_the_configuration_digest_is_the_run_key_without_the_seed(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite")
    run = request(tmp_path, budget=60.0, hparams={"lr": 0.002}, seed=3)
    run_id = record(store, run, 120.0)
    (row,) = runs_frame(store).to_dict("records")
    parts = configuration_parts(row)
    from harness.provenance import run_key

    assert run_key(seed=3, **parts) == row["run_key"] == run.key(CHECKSUMS)
    assert configuration_digest(**parts) != row["run_key"] and row["id"] == run_id


def test_only_the_official_configuration_ranks_and_a_rerun_of_a_seed_counts_once(tmp_path: Path) -> None:
    """Issue 13: a 600 s run, a 60 s run, an lr override and a forced rerun of the same seed."""
    store = Store(tmp_path / "r.sqlite")
    first = record(store, request(tmp_path), 130.0)
    short = record(store, request(tmp_path, budget=60.0), 400.0)
    override = record(store, request(tmp_path, hparams={"lr": 0.002}), 90.0)
    rerun = record(store, request(tmp_path), 128.0)  # --force: the same key again

    (ranking,) = leaderboard(store, phase="open")
    (row,) = ranking.table.to_dict("records")
    assert row["entry"] == "my_lstm" and row["seeds"] == 1 and row["run_ids"] == [rerun]
    assert row["valid_ppl"] == pytest.approx(128.0) and np.isnan(row["valid_ci_low"])  # one seed: no interval
    runs = classified_runs(store).set_index("id")
    assert list(runs["configuration"]) == ["exploration", "exploration", "exploration", "official"]
    assert runs.loc[short, "differs"] == "budget 60 (official 600)"
    assert runs.loc[override, "differs"] == "hparams lr=0.002"
    assert runs.loc[first, "differs"] == f"seed 0 rerun: run {rerun} counts"
    assert runs.loc[rerun, "counted"] and not runs.loc[[first, short, override], "counted"].any()
    assert runs.loc[rerun, "config_digest"] == runs.loc[first, "config_digest"] != runs.loc[short, "config_digest"]
    assert failures(store).empty


def test_several_differences_a_changed_source_and_pinned_hyper_parameters(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite")
    old = record(store, request(tmp_path), 130.0)
    both = record(store, request(tmp_path, budget=60.0, hparams={"lr": 0.002}, evals=3, source="x = 2\n"), 300.0)
    pinned = record(store, request(tmp_path, hparams={"lr": 0.002}, source="x = 2\n"), 125.0)
    runs = classified_runs(store).set_index("id")
    new_hash = runs.loc[both, "source_hash"]
    assert runs.loc[old, "differs"] == f"source {runs.loc[old, 'source_hash'][:8]} (current {new_hash[:8]})"
    assert runs.loc[both, "differs"] == "budget 60 (official 600); evals 3 (official 10); hparams lr=0.002"
    assert runs.loc[pinned, "differs"] == "hparams lr=0.002"
    assert leaderboard(store) == []  # nothing of the current source with the declared defaults

    config = tmp_path / "competition.toml"
    config.write_text('[entries.my_lstm.hparams]\nlr = 0.002\n')
    competition = load_competition(config)
    runs = classified_runs(store, competition).set_index("id")
    assert runs.loc[pinned, "configuration"] == "official" and runs.loc[pinned, "counted"]
    assert runs.loc[both, "differs"] == "budget 60 (official 600); evals 3 (official 10)"
    assert "hparams lr=default (official 0.002)" in runs.loc[old, "differs"]
    (ranking,) = leaderboard(store, competition=competition)
    assert list(ranking.table["run_ids"]) == [[pinned]]
    # The file on disk is the current source once the caller knows it: an edit not yet run ranks nothing.
    assert leaderboard(store, competition=competition, current_sources={"my_lstm": "f" * 64}) == []


def test_the_interval_is_computed_on_nll_and_shown_as_perplexity(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite")
    perplexities = [100.0, 300.0, 120.0]
    for seed, ppl in enumerate(perplexities):
        record(store, request(tmp_path, seed=seed), ppl)
    record(store, request(tmp_path, source="x = 2\n", seed=0), 130.0)  # another entry version, one seed
    (ranking,) = leaderboard(store)
    assert ranking.table.empty is False and list(ranking.table["seeds"]) == [1]  # the new source alone
    assert np.isnan(ranking.table.loc[0, "valid_ci_low"]) and np.isnan(ranking.table.loc[0, "valid_ci_high"])

    store = Store(tmp_path / "three.sqlite")
    for seed, ppl in enumerate(perplexities):
        record(store, request(tmp_path, seed=seed), ppl)
    row = leaderboard(store)[0].table.iloc[0]
    nll = np.log(perplexities)
    expected = stats.t.interval(0.95, 2, loc=nll.mean(), scale=stats.sem(nll))
    assert row["valid_ppl"] == pytest.approx(np.exp(nll.mean()))
    assert (row["valid_ci_low"], row["valid_ci_high"]) == pytest.approx(np.exp(expected))
    assert 0 < row["valid_ci_low"] < row["valid_ppl"] < row["valid_ci_high"]
    on_perplexities = stats.t.interval(0.95, 2, loc=np.mean(perplexities), scale=stats.sem(perplexities))
    assert on_perplexities[0] < 0  # what the old interval said for these seeds


def test_a_failed_official_seed_is_listed_and_a_failed_exploration_run_is_not(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite")
    record(store, request(tmp_path, budget=60.0), None, status="failed", reason="boom")
    assert failures(store).empty
    official = record(store, request(tmp_path), None, status="timeout", reason="too slow")
    assert list(failures(store)["id"]) == [official]
    record(store, request(tmp_path, seed=1), 140.0)
    assert failures(store).empty and len(leaderboard(store)) == 1


def test_published_results_are_interleaved_by_score_and_never_numbered(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from harness.cli import main

    db = tmp_path / "r.sqlite"
    store = Store(db)
    record(store, request(tmp_path), 118.0)  # between Zaremba's small LSTM (valid 120.7) and his medium (86.2)
    references = load_references()
    (ranking,) = leaderboard(store, references=references)
    merged = ranking.with_references()
    scored = merged.dropna(subset=["valid_ppl"])
    assert list(scored["valid_ppl"]) == sorted(scored["valid_ppl"])
    assert merged["valid_ppl"].isna().sum() == sum(ref["valid"] is None for ref in references)  # no figure: last
    assert merged["valid_ppl"].iloc[-1:].isna().all()
    (mine,) = merged.index[merged["row_type"] == "ranked"]
    assert merged.loc[mine - 1, "entry"].startswith("LSTM medium") and merged.loc[mine + 1, "entry"].startswith("LSTM small")
    assert merged.loc[merged["row_type"] == "reference", "rank"].isna().all() and merged.loc[mine, "rank"] == 1

    runner = CliRunner()
    rows = json.loads(runner.invoke(main, ["results", "--db", str(db), "--format", "json"]).output)
    assert [r["entry"] for r in rows] == list(merged["entry"])
    assert {r["note"] for r in rows if r["row_type"] == "reference"} == {"published, not run here"}
    table = runner.invoke(main, ["results", "--db", str(db)]).output
    lines = table.splitlines()
    order = [next(i for i, line in enumerate(lines) if name in line)
             for name in ("AWD-LSTM", "LSTM medium", "my_lstm", "LSTM small", "KN-5")]
    assert order == sorted(order)
    mine_line = lines[order[2]]
    assert mine_line.startswith("1 ") and lines[order[1]].startswith("- ") and "published, not run here" in lines[order[1]]
    import io

    import pandas as pd

    csv = pd.read_csv(io.StringIO(runner.invoke(main, ["results", "--db", str(db), "--format", "csv"]).output))
    assert list(csv["entry"]) == list(merged["entry"]) and csv["rank"].count() == 1


def test_runs_listing_marks_exploration_runs_and_shows_runs_in_flight(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from harness.cli import main

    db = tmp_path / "r.sqlite"
    store = Store(db)
    official = record(store, request(tmp_path), 130.0, peak_memory_bytes=2**30)
    record(store, request(tmp_path, budget=60.0, hparams={"lr": 0.002}), 300.0)
    running = request(tmp_path, seed=1)
    in_flight = store.start_run(run_key=running.key(CHECKSUMS), **running.row_fields(CHECKSUMS))
    store.add_curve_point(in_flight, train_seconds=60.0, steps=10, tokens=640, valid_ppl=900.0)  # training
    done_training = store.start_run(run_key=request(tmp_path, seed=2).key(CHECKSUMS),
                                    **request(tmp_path, seed=2).row_fields(CHECKSUMS))
    store.add_curve_point(done_training, train_seconds=600.0, steps=99, tokens=6400, valid_ppl=300.0)
    runner = CliRunner()
    listed = runner.invoke(main, ["results", "--db", str(db), "--runs"])
    assert listed.exit_code == 0, listed.output
    assert "exploration: budget 60 (official 600); hparams lr=0.002" in listed.output
    assert "running: training, " in listed.output and "elapsed" in listed.output
    assert "nan" not in listed.output.lower()
    rows = {r["id"]: r for r in json.loads(runner.invoke(main, ["results", "--db", str(db), "--runs",
                                                                "--format", "json"]).output)}
    assert rows[official]["configuration"] == "official" and rows[official]["counted"]
    assert rows[in_flight]["configuration"] == "official" and not rows[in_flight]["counted"]
    assert rows[in_flight]["phase"] == "training" and rows[in_flight]["elapsed_seconds"] >= 0
    assert rows[done_training]["phase"] == "scoring" and rows[official]["phase"] is None
    assert rows[official]["config_digest"] == rows[in_flight]["config_digest"]
    assert "config" not in rows[official] and rows[official]["hparam_overrides"] == {}
    assert runner.invoke(main, ["results", "--db", str(db), "--runs", "--format", "csv"]).exit_code == 0
    shown = runner.invoke(main, ["show", str(in_flight), "--db", str(db)]).output
    assert "running: training" in shown and "configuration: official" in shown and "nan" not in shown.lower()
    shown = runner.invoke(main, ["show", str(official + 1), "--db", str(db)]).output
    assert "configuration: exploration: budget 60 (official 600)" in shown
    assert f"configuration digest: {rows[official + 1]['config_digest']}" in shown


@pytest.mark.slow
def test_a_pinned_run_through_the_command_line_is_the_official_one(tmp_path: Path, env: dict[str, str]) -> None:
    """`harness run` applies the pin from competition.toml; that run is the official one and ranks."""
    import json

    from tests.conftest import make_project, run_cli

    project = make_project(tmp_path)
    (project / "competition.toml").write_text("[entries.unigram.hparams]\nseq_len = 2048\n")
    done = run_cli("run", "unigram", "--no-site", cwd=project, env=env)
    assert done.code == 0, done.stderr
    ranked = json.loads(run_cli("results", "--format", "json", cwd=project).stdout)
    (unigram,) = [row for row in ranked if row["row_type"] == "ranked"]
    assert unigram["entry"] == "unigram" and unigram["seeds"] == 1
    (run,) = json.loads(run_cli("results", "--runs", "--format", "json", cwd=project).stdout)
    assert run["configuration"] == "official" and run["hparam_overrides"] == {"seq_len": 2048}
    assert run["config_digest"] == unigram["config_digest"]
