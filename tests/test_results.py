"""Statistics and rankings, checked against direct scipy / numpy computations on known data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from harness.errors import RunStatus
from harness.results import (
    bootstrap_weights, failures, leaderboard, mean_interval, pairwise, prob_better, runs_frame,
)
from harness.store import Store

BASE = dict(entry_path="/x.py", source="", device="cpu", budget_seconds=600.0, memory_limit_bytes=2**33,
            harness_version="0", track="causal", division="cpu")


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
    assert [r["entry"] for r in rows] == ["a", "b"] and rows[0]["seeds"] == 2
    csv = runner.invoke(main, ["results", "--db", str(db), "--format", "csv", "--entry", "b"]).output
    assert csv.splitlines()[0].startswith("track,division,split,rank,entry") and len(csv.splitlines()) == 2
    parquet = tmp_path / "r.parquet"
    assert runner.invoke(main, ["results", "--db", str(db), "--format", "parquet", "-o", str(parquet)]).exit_code == 0
    assert list(pd.read_parquet(parquet)["entry"]) == ["a", "b"]
    assert runner.invoke(main, ["results", "--db", str(db), "--format", "parquet"]).exit_code == 2
    listed = runner.invoke(main, ["results", "--db", str(db), "--status", "failed"]).output
    assert " c " in listed and " a " not in listed
    shown = runner.invoke(main, ["show", str(failed), "--db", str(db)])
    assert shown.exit_code == 0 and "runtime_error" in shown.output and "setup raised KeyError" in shown.output
    assert runner.invoke(main, ["show", "999", "--db", str(db)]).exit_code == 3
    assert runner.invoke(main, ["results", "--db", str(tmp_path / "none.sqlite")]).exit_code == 3
