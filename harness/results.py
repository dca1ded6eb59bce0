"""Reading results: runs as a pandas table, per-entry statistics over seeds, rankings with ties.

Which runs count for an entry: those of its latest source (by the newest run), per track and
division. Statistics over the seeds that ended `ok`: mean, standard deviation and a 95%
confidence interval (Student's t). Two neighbours in a ranking are compared on the same sentences:
each entry's per-sentence NLL, averaged over its seeds, and a paired bootstrap over sentences
gives the probability that the higher-ranked entry is better; below 95% they are marked tied.
During the `open` phase rankings use the validation split only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sqlalchemy import select

from harness.errors import RunStatus
from harness.store import Run, Store

CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
FAILED_STATUSES = tuple(s.value for s in RunStatus if s not in (RunStatus.OK, RunStatus.RUNNING))

RUN_COLUMNS = [
    "id", "entry", "display_name", "authors", "description", "entry_kind", "source_hash", "track", "division",
    "device", "device_name", "seed", "status", "failure", "reason", "valid_ppl", "valid_tokens", "test_ppl",
    "test_tokens", "valid_accuracy", "test_accuracy", "param_count", "tokens_trained", "train_seconds",
    "peak_memory_bytes", "steps", "epochs", "budget_seconds", "started_at", "ended_at", "run_key",
]


def runs_frame(store: Store, *, entry: str | None = None, status: str | None = None,
               track: str | None = None, division: str | None = None) -> pd.DataFrame:
    """One row per run (without sources and per-sentence arrays), filtered, oldest first."""
    query = select(*[getattr(Run, c) for c in RUN_COLUMNS]).order_by(Run.id)
    for column, value in (("entry", entry), ("status", status), ("track", track), ("division", division)):
        if value is not None:
            query = query.where(getattr(Run, column) == value)
    with store.session() as session:
        rows = session.execute(query).all()
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def current_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs of each entry's latest source only (an edited entry starts afresh)."""
    if frame.empty:
        return frame
    latest = frame.sort_values("id").groupby("entry")["source_hash"].last()
    return frame[frame["source_hash"] == frame["entry"].map(latest)]


def mean_interval(values: np.ndarray) -> tuple[float, float, float, float]:
    """mean, sample standard deviation, and the 95% t-interval (NaN where it is undefined)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if values.size < 2:
        return mean, float("nan"), float("nan"), float("nan")
    std = float(values.std(ddof=1))
    if std == 0.0:
        return mean, 0.0, mean, mean
    low, high = stats.t.interval(CONFIDENCE, values.size - 1, loc=mean, scale=stats.sem(values))
    return mean, std, float(low), float(high)


@lru_cache(maxsize=4)
def bootstrap_weights(sentences: int, samples: int = BOOTSTRAP_SAMPLES) -> np.ndarray:
    """(samples, sentences) resampling counts: row r says how often each sentence is drawn.

    A resample's total is then one dot product, so every comparison of a ranking is one GEMM.
    """
    generator = np.random.default_rng(BOOTSTRAP_SEED)
    return generator.multinomial(sentences, np.full(sentences, 1.0 / sentences), size=samples).astype(np.float32)


def prob_better(a: np.ndarray, b: np.ndarray) -> float:
    """Paired bootstrap over sentences: P(total NLL of a < total NLL of b)."""
    return float(probs_better(np.stack([np.asarray(a) - np.asarray(b)], axis=1))[0])


def probs_better(differences: np.ndarray) -> np.ndarray:
    """differences: (sentences, pairs) NLL of the first minus the second -> (pairs,) P(first better)."""
    totals = bootstrap_weights(differences.shape[0]) @ differences.astype(np.float32)  # (samples, pairs)
    return (totals < 0).mean(axis=0)


def paired_t_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.ttest_rel(a, b).pvalue)


@dataclass
class Ranking:
    track: str
    division: str
    split: str
    table: pd.DataFrame


def leaderboard(store: Store, phase: str = "open", track: str | None = None,
                division: str | None = None) -> list[Ranking]:
    """One ranking per (track, division): entries by mean perplexity of their ok seeds."""
    split = "test" if phase == "final" else "valid"
    frame = current_runs(runs_frame(store, track=track, division=division))
    ok = frame[frame["status"] == RunStatus.OK.value].copy()
    ok["division"] = ok["division"].fillna("-")
    rankings = []
    for (track_name, division_name), group in ok.groupby(["track", "division"], sort=True):
        table = _aggregate(group, split)
        _mark_ties(store, table, split)
        rankings.append(Ranking(str(track_name), str(division_name), split, table))
    return rankings


def _aggregate(group: pd.DataFrame, split: str) -> pd.DataFrame:
    """Per entry: mean, std and 95% t-interval of each split's perplexity, the latest metadata."""
    ordered = group.sort_values("id")
    by_entry = ordered.groupby("entry", sort=False)
    table = by_entry[["display_name", "authors", "description", "entry_kind", "param_count", "device",
                      "device_name", "ended_at", "source_hash"]].last()
    table["seeds"] = by_entry.size()
    table["run_ids"] = by_entry["id"].agg(list)
    for column in ("tokens_trained", "train_seconds", "peak_memory_bytes", "valid_tokens", "test_tokens",
                   "valid_accuracy", "test_accuracy"):
        table[column] = by_entry[column].mean()
    for name in ("valid", "test"):
        values = by_entry[f"{name}_ppl"]
        mean, std, count = values.mean(), values.std(ddof=1), values.count()
        half = stats.t.ppf(0.5 + CONFIDENCE / 2, (count - 1).clip(lower=1)) * std / np.sqrt(count)
        half = half.where(count >= 2)  # one seed: no interval
        table[f"{name}_ppl"], table[f"{name}_std"] = mean, std
        table[f"{name}_ci_low"], table[f"{name}_ci_high"] = mean - half, mean + half
    table = table.reset_index().sort_values([f"{split}_ppl", "entry"], kind="stable").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    table["p_better_than_next"] = np.nan
    table["tied_with_above"] = False
    return table


def sentence_nll_by_run(store: Store, run_ids: list[int], split: str) -> dict[int, np.ndarray]:
    """Per-sentence NLL arrays of the given runs that have one, in one query."""
    column = getattr(Run, f"{split}_sentence_nll")
    with store.session() as session:
        rows = session.execute(select(Run.id, column).where(Run.id.in_(run_ids), column.is_not(None))).all()
    return {run_id: np.frombuffer(blob, dtype="<f4") for run_id, blob in rows}


def sentence_nll(store: Store, run_ids: list[int], split: str) -> np.ndarray | None:
    """(S,) per-sentence NLL averaged over the given runs, or None if any run lacks it."""
    return _averaged(sentence_nll_by_run(store, run_ids, split), run_ids)


def _averaged(arrays: dict[int, np.ndarray], run_ids: list[int]) -> np.ndarray | None:
    if not run_ids or any(run_id not in arrays for run_id in run_ids):
        return None
    return np.mean([arrays[run_id].astype(float) for run_id in run_ids], axis=0)


def _mark_ties(store: Store, table: pd.DataFrame, split: str) -> None:
    """Compare each entry with the one ranked just below it on the same sentences."""
    loaded = sentence_nll_by_run(store, [i for ids in table["run_ids"] for i in ids], split)
    arrays = [_averaged(loaded, ids) for ids in table["run_ids"]]
    pairs = [i for i in range(len(table) - 1)
             if arrays[i] is not None and arrays[i + 1] is not None and arrays[i].shape == arrays[i + 1].shape]
    by_length: dict[int, list[int]] = {}
    for upper in pairs:
        by_length.setdefault(arrays[upper].shape[0], []).append(upper)
    probability = np.full(len(table), np.nan)
    tied = np.zeros(len(table), dtype=bool)
    for uppers in by_length.values():
        differences = np.stack([arrays[i] - arrays[i + 1] for i in uppers], axis=1)  # (S, pairs)
        found = probs_better(differences)
        probability[uppers] = found
        tied[np.array(uppers) + 1] = found < CONFIDENCE
    table["p_better_than_next"], table["tied_with_above"] = probability, tied


def failures(store: Store, track: str | None = None) -> pd.DataFrame:
    """Entries whose latest run did not end ok, with status and reason."""
    frame = current_runs(runs_frame(store, track=track))
    if frame.empty:
        return frame
    latest = frame.sort_values("id").groupby("entry").tail(1)
    return latest[latest["status"].isin(FAILED_STATUSES)].reset_index(drop=True)


def pairwise(store: Store, first: list[int], second: list[int], split: str = "test") -> dict[str, float] | None:
    """Paired comparison of two sets of runs: bootstrap P(first better) and the paired t-test p."""
    a, b = sentence_nll(store, first, split), sentence_nll(store, second, split)
    if a is None or b is None or a.shape != b.shape:
        return None
    return {"p_first_better": prob_better(a, b), "t_test_pvalue": paired_t_pvalue(a, b),
            "mean_nll_difference": float((a - b).mean())}
