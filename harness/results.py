"""Reading results: runs as a pandas table, official configurations, statistics over seeds, rankings.

An entry's official configuration in a division is its current source (the file on disk when the
caller knows it, else the source of its most recent run), its declared hyper-parameters (or those
pinned in competition.toml), the division's budget and memory, and the competition's validation
cadence. A run's configuration digest is its run key without the seed
(`harness.provenance.configuration_digest`), rebuilt here from the stored columns. Only runs with
the official digest rank, and per seed only the latest finished result counts; every other run is
an exploration run, listed with what differs from the official configuration, never ranked.

Statistics over an entry's counted seeds that ended `ok`: the mean NLL per token (log perplexity)
with its 95% Student-t interval, shown as perplexity (exp of the mean and of the bounds), so the
interval is never negative; one seed has no interval. Two neighbours in a ranking are compared on
the same sentences: each entry's per-sentence NLL, averaged over its seeds, and a paired bootstrap
over sentences gives the probability that the higher-ranked entry is better; below 95% they are
marked tied. Published reference results are interleaved by score, never numbered. During the
`open` phase rankings use the validation split only.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sqlalchemy import func, select

import harness
from harness.budget import format_bytes
from harness.config import Competition
from harness.errors import FailureKind, RunStatus
from harness.provenance import configuration_digest
from harness.store import CurvePoint, Run, Store

CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
FAILED_STATUSES = tuple(s.value for s in RunStatus if s not in (RunStatus.OK, RunStatus.RUNNING))
# A finished run of the configuration: a result. `interrupted` is the harness stopping, not a result.
RESULT_STATUSES = tuple(s.value for s in RunStatus if s not in (RunStatus.RUNNING, RunStatus.INTERRUPTED))
OFFICIAL, EXPLORATION = "official", "exploration"
RANKED, REFERENCE = "ranked", "reference"
REFERENCE_NOTE = "published, not run here"
REFERENCES_FILE = Path(harness.__file__).resolve().parent.parent / "leaderboard" / "references.json"

RUN_COLUMNS = [
    "id", "entry", "display_name", "authors", "description", "entry_kind", "source_hash", "track", "division",
    "device", "device_name", "seed", "status", "failure", "reason", "valid_ppl", "valid_tokens", "test_ppl",
    "test_tokens", "valid_accuracy", "test_accuracy", "param_count", "tokens_trained", "train_seconds",
    "peak_memory_bytes", "steps", "epochs", "budget_seconds", "memory_limit_bytes", "hparam_overrides",
    "started_at", "ended_at", "run_key", "hardware", "harness_version", "data_checksums", "eval_protocol",
]
CLASSIFY_COLUMNS = ["id", "entry", "division", "seed", "status", "failure", "ended_at", "source_hash", "hparam_overrides",
                    "budget_seconds", "memory_limit_bytes", "evals", "device", "hardware", "data_checksums",
                    "eval_protocol", "harness_version"]
# Stored columns read only to rebuild the configuration digest; too bulky to print per run.
DIGEST_ONLY_COLUMNS = ["data_checksums", "eval_protocol"]


def runs_frame(store: Store, *, entry: str | list[str] | None = None, status: str | None = None,
               track: str | None = None, division: str | None = None) -> pd.DataFrame:
    """One row per run (without sources and per-sentence arrays), filtered, oldest first.

    Adds `evals` (the validation cadence, from the stored run config), and for runs in flight
    their `phase` (starting, training or scoring) and `elapsed_seconds` since they started.
    """
    # The validation cadence `harness run` records in the run's config (read in SQL: the config is bulky).
    evals = Run.config[("options", "evals")].as_float().label("evals")
    query = select(*[getattr(Run, c) for c in RUN_COLUMNS], evals).order_by(Run.id)
    query = _filtered(query, entry=entry, status=status, track=track, division=division)
    with store.session() as session:
        rows = session.execute(query).all()
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS + ["evals"])
    frame["evals"] = [None if _missing(value) else int(value) for value in frame["evals"]]
    validated = _last_validation(store, frame.loc[frame["status"] == RunStatus.RUNNING.value, "id"].tolist())
    frame["phase"] = [_phase(status, trained, budget, validated.get(run_id)) for run_id, status, trained, budget in
                      zip(frame["id"], frame["status"], frame["train_seconds"], frame["budget_seconds"])]
    now = dt.datetime.now(dt.timezone.utc)
    frame["elapsed_seconds"] = [(now - _utc(started)).total_seconds() if phase else None
                                for phase, started in zip(frame["phase"], frame["started_at"])]
    return frame


def _filtered(query: Any, **filters: str | list[str] | None) -> Any:
    for column, value in filters.items():
        if isinstance(value, list):
            query = query.where(getattr(Run, column).in_(value))
        elif value is not None:
            query = query.where(getattr(Run, column) == value)
    return query


def _last_validation(store: Store, run_ids: list[int]) -> dict[int, float]:
    """run id -> training seconds at its latest validation pass (runs in flight record only these)."""
    if not run_ids:
        return {}
    query = (select(CurvePoint.run_id, func.max(CurvePoint.train_seconds))
             .where(CurvePoint.run_id.in_(run_ids)).group_by(CurvePoint.run_id))
    with store.session() as session:
        return {run_id: float(seconds) for run_id, seconds in session.execute(query).all()}


def _phase(status: str, train_seconds: Any, budget: Any, last_validation: float | None) -> str | None:
    """Where a run in flight is, from what it has recorded so far (None once it has ended).

    `scoring` once its training time is recorded or a validation pass came at the end of the
    budget; `training` before (it may still be importing or setting up: nothing records that).
    """
    if status != RunStatus.RUNNING.value:
        return None
    if not _missing(train_seconds) or (last_validation is not None and not _missing(budget)
                                       and last_validation >= float(budget)):
        return "scoring"
    return "training"


def _utc(value: Any) -> dt.datetime:
    stamp = pd.Timestamp(value)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp).to_pydatetime()


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT


# --- Official configurations --------------------------------------------------------------------


@dataclass(frozen=True)
class OfficialConfig:
    """What an official run of one entry in one division is made of (the seed and environment aside)."""

    source_hash: str
    hparams: dict[str, Any]
    budget_seconds: float
    memory_bytes: int
    evals: int
    device: str


def official_config(competition: Competition, division: str, entry: str, source_hash: str) -> OfficialConfig | None:
    """The official configuration of `entry` in `division`, or None for a division the config lacks."""
    settings = competition.divisions.get(division)
    if settings is None:
        return None
    return OfficialConfig(source_hash=source_hash, hparams=competition.official_hparams(entry),
                          budget_seconds=float(settings.budget), memory_bytes=settings.memory_bytes,
                          evals=competition.evals, device=settings.device)


def configuration_parts(row: dict[str, Any]) -> dict[str, Any]:
    """The parts of a stored run's key except the seed, named as `RunRequest.key` names them."""
    return dict(entry=row["entry"], source_hash=row["source_hash"], hparams=row["hparam_overrides"] or {},
                budget=row["budget_seconds"], memory=row["memory_limit_bytes"], evals=row["evals"],
                device=row["device"], hardware=row["hardware"], data=row["data_checksums"] or {},
                protocol=row["eval_protocol"] or {}, harness=row["harness_version"])


def classify_runs(frame: pd.DataFrame, competition: Competition | None = None,
                  current_sources: dict[str, str] | None = None) -> pd.DataFrame:
    """The frame with `config_digest`, `configuration` (official or exploration), `differs` and `counted`.

    `counted`: the run is its seed's result in the ranking (official digest, the latest finished
    result of its seed). An official run still in flight is `official` but not yet counted.
    `current_sources`: entry -> source hash on disk; entries missing from it use their newest run's.
    """
    competition = competition or Competition()
    frame = frame.copy()
    # Plain Python from here (a pandas write per run is far slower), on the columns it needs.
    records = frame[CLASSIFY_COLUMNS].to_dict("records")
    for record in records:
        record["config_digest"] = configuration_digest(**configuration_parts(record))
    newest = {r["entry"]: r for r in sorted(records, key=lambda r: r["id"])}
    sources = {**{entry: r["source_hash"] for entry, r in newest.items()}, **(current_sources or {})}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        record.update(configuration=EXPLORATION, differs="", counted=False)
        division = "-" if _missing(record["division"]) else str(record["division"])
        groups.setdefault((record["entry"], division), []).append(record)
    for (entry, division), group in groups.items():
        official = official_config(competition, division, entry, sources[entry])
        if official is None:
            missing = "no division recorded" if division == "-" else f"division {division} is not in {competition.source}"
            for record in group:
                record["differs"] = missing
        else:
            _classify_group(group, official)
    for column in ("config_digest", "configuration", "differs", "counted"):
        frame[column] = pd.Series([r[column] for r in records], index=frame.index, dtype=bool if column == "counted" else object)
    return frame


def _classify_group(group: list[dict[str, Any]], official: OfficialConfig) -> None:
    """Mark the runs of one entry in one division official, counted or exploration (in place)."""
    differences = {id(r): _setting_differences(r, official) for r in group}
    candidates = [r for r in group if not differences[id(r)]]
    if candidates:
        # Runs of the official settings on other hardware, data or harness versions: the newest decides.
        newest = max(candidates, key=lambda r: r["id"])
        for r in candidates:
            if r["config_digest"] != newest["config_digest"]:
                differences[id(r)] = _environment_differences(configuration_parts(r), configuration_parts(newest))
        same = [r for r in group if r["config_digest"] == newest["config_digest"]]
        counted = _latest_result_per_seed(same)
        for r in same:
            if counted.get(r["seed"]) == r["id"]:
                r.update(configuration=OFFICIAL, counted=True)
            elif r["status"] == RunStatus.RUNNING.value:
                r["configuration"] = OFFICIAL
            elif r["status"] == RunStatus.INTERRUPTED.value:
                differences[id(r)] = ["interrupted before it finished: not a result"]
            else:
                differences[id(r)] = [f"seed {r['seed']} rerun: run {counted[r['seed']]} counts"]
    for r in group:
        r["differs"] = "; ".join(differences[id(r)])


def _latest_result_per_seed(runs: list[dict[str, Any]]) -> dict[int, int]:
    """seed -> id of its latest finished result (a forced rerun replaces the earlier one)."""
    latest: dict[int, dict[str, Any]] = {}
    results = (r for r in runs if r["status"] in RESULT_STATUSES and r.get("failure") != FailureKind.HARNESS_ERROR.value)
    for r in sorted(results, key=_finish_order):  # a fault of the harness is no result of the entry's
        latest[r["seed"]] = r
    return {seed: r["id"] for seed, r in latest.items()}


def _finish_order(run: dict[str, Any]) -> tuple[float, int]:
    ended = run["ended_at"]
    return (-math.inf if _missing(ended) else _utc(ended).timestamp(), run["id"])


def _setting_differences(row: dict[str, Any], official: OfficialConfig) -> list[str]:
    """What an organiser or participant chose differently from the official configuration."""
    found = []
    if row["source_hash"] != official.source_hash:
        found.append(f"source {str(row['source_hash'])[:8]} (current {official.source_hash[:8]})")
    if _missing(row["budget_seconds"]) or not math.isclose(row["budget_seconds"], official.budget_seconds):
        found.append(f"budget {_figure(row['budget_seconds'])} (official {_figure(official.budget_seconds)})")
    if row["memory_limit_bytes"] != official.memory_bytes:
        found.append(f"memory {format_bytes(row['memory_limit_bytes'])} (official {format_bytes(official.memory_bytes)})")
    # A run that did not record its cadence (written before runs did, or by another tool) is not
    # taken for an override; beside runs that did record it, its digest differs and the newest decides.
    if not _missing(row["evals"]) and int(row["evals"]) != official.evals:
        found.append(f"evals {int(row['evals'])} (official {official.evals})")
    if row["device"] != official.device:
        found.append(f"device {row['device']} (official {official.device})")
    overrides = row["hparam_overrides"] or {}
    if overrides != official.hparams:
        found.append("hparams " + _hparam_differences(overrides, official.hparams))
    return found


def _hparam_differences(overrides: dict[str, Any], official: dict[str, Any]) -> str:
    """`lr=0.002` for an override, `lr=default (official 0.002)` where a pinned value is missing."""
    parts = []
    for key in sorted(set(overrides) | set(official)):
        if overrides.get(key, object()) == official.get(key, object()):
            continue
        value = overrides[key] if key in overrides else "default"
        parts.append(f"{key}={value}" + (f" (official {official[key]})" if key in official else ""))
    return ", ".join(parts)


def _environment_differences(parts: dict[str, Any], official: dict[str, Any]) -> list[str]:
    """Differences outside the organiser's settings (hardware, data, evaluation protocol, harness
    version), or a cadence recorded by one run and not by the other."""
    found = []
    if parts["evals"] != official["evals"]:
        found.append(f"evals {_figure(parts['evals'])} (official {_figure(official['evals'])})")
    if parts["hardware"] != official["hardware"]:
        found.append(f"hardware {parts['hardware']} (official {official['hardware']})")
    if parts["data"] != official["data"]:
        found.append("data checksums differ from the official runs'")
    if parts["protocol"] != official["protocol"]:
        found.append("evaluation protocol differs from the official runs'")
    if parts["harness"] != official["harness"]:
        found.append(f"harness {parts['harness']} (official {official['harness']})")
    return found or ["configuration digest differs from the official runs'"]


def _figure(value: Any) -> str:
    return "not recorded" if _missing(value) else f"{float(value):g}"


def classified_runs(store: Store, competition: Competition | None = None,
                    current_sources: dict[str, str] | None = None, *, entry: str | None = None,
                    status: str | None = None, track: str | None = None,
                    division: str | None = None) -> pd.DataFrame:
    """`runs_frame` with the official/exploration columns; filters apply after classifying.

    (An entry's current source is its newest run's across every division, so every run of an
    entry is read and classified: those of the entries that have a run passing the filters.)
    """
    entries: str | list[str] | None = entry
    if entry is None and (status, track, division) != (None, None, None):
        query = _filtered(select(Run.entry).distinct(), status=status, track=track, division=division)
        with store.session() as session:
            entries = list(session.scalars(query).all())
    frame = classify_runs(runs_frame(store, entry=entries), competition, current_sources)
    for column, value in (("status", status), ("track", track), ("division", division)):
        if value is not None:
            frame = frame[frame[column] == value]
    return frame.reset_index(drop=True)


# --- Statistics ---------------------------------------------------------------------------------


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
    """Ranked entries only, best first."""
    references: list[dict[str, Any]] = field(default_factory=list)
    """Published results that apply to this ranking (its track)."""

    def with_references(self) -> pd.DataFrame:
        """The table with the published results interleaved by score (`row_type` reference, no rank)."""
        return interleave_references(self.table, self.references, self.split)


def load_references(path: Path = REFERENCES_FILE) -> list[dict[str, Any]]:
    """Published PTB results (leaderboard/references.json); none where the file is absent."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def interleave_references(table: pd.DataFrame, references: list[dict[str, Any]], split: str) -> pd.DataFrame:
    """Entries and published results in one table sorted by score; references unnumbered, unscored last."""
    ranked = table.assign(row_type=RANKED, note="")
    rows = [{"row_type": REFERENCE, "note": REFERENCE_NOTE, "entry": ref["name"], "display_name": ref["name"],
             "description": ref.get("source"), "url": ref.get("url"), "param_count": ref.get("params"),
             f"{split}_ppl": ref.get(split), "tied_with_above": False} for ref in references]
    merged = pd.concat([ranked, pd.DataFrame(rows)], ignore_index=True) if rows else ranked
    merged = merged.sort_values(f"{split}_ppl", kind="stable", na_position="last").reset_index(drop=True)
    for column in ("rank", "seeds"):  # whole numbers for entries, none for references
        merged[column] = merged[column].astype("Int64")
    merged["tied_with_above"] = merged["tied_with_above"].fillna(False).astype(bool)
    return merged


def _of_track_and_division(frame: pd.DataFrame, track: str | None, division: str | None) -> pd.DataFrame:
    if track is not None:
        frame = frame[frame["track"] == track]
    if division is not None:
        frame = frame[frame["division"] == division]
    return frame


def leaderboard(store: Store, phase: str = "open", track: str | None = None, division: str | None = None,
                competition: Competition | None = None, current_sources: dict[str, str] | None = None,
                references: list[dict[str, Any]] | None = None, classified: pd.DataFrame | None = None) -> list[Ranking]:
    """One ranking per (track, division): entries by the counted ok seeds of their official configuration.
    `classified`: the frame of `classified_runs` when the caller has it already (classified once)."""
    split = "test" if phase == "final" else "valid"
    frame = _of_track_and_division(classified, track, division) if classified is not None else \
        classified_runs(store, competition, current_sources, track=track, division=division)
    ok = frame[frame["counted"] & (frame["status"] == RunStatus.OK.value)].copy()
    ok["division"] = ok["division"].fillna("-")
    rankings = []
    for (track_name, division_name), group in ok.groupby(["track", "division"], sort=True):
        table = _aggregate(group, split)
        _mark_ties(store, table, split)
        applicable = [ref for ref in references or [] if ref.get("track", "causal") == track_name]
        rankings.append(Ranking(str(track_name), str(division_name), split, table, applicable))
    return rankings


def _aggregate(group: pd.DataFrame, split: str) -> pd.DataFrame:
    """Per entry: exp(mean NLL) and its 95% interval over seeds for each split, the latest metadata."""
    ordered = group.sort_values("id")
    by_entry = ordered.groupby("entry", sort=False)
    table = by_entry[["display_name", "authors", "description", "entry_kind", "param_count", "device",
                      "device_name", "ended_at", "source_hash", "config_digest"]].last()
    table["seeds"] = by_entry.size()
    table["run_ids"] = by_entry["id"].agg(list)
    for column in ("tokens_trained", "train_seconds", "peak_memory_bytes", "valid_tokens", "test_tokens",
                   "valid_accuracy", "test_accuracy"):
        table[column] = by_entry[column].mean()
    for name in ("valid", "test"):
        # Perplexity is exp(mean NLL per token): average the seeds' NLLs, and put the t-interval on
        # them; its exponential bounds are positive and bracket the score. One seed: no interval.
        nll = np.log(ordered[f"{name}_ppl"].astype(float)).groupby(ordered["entry"], sort=False)
        mean, std, count = nll.mean(), nll.std(ddof=1), nll.count()
        half = stats.t.ppf(0.5 + CONFIDENCE / 2, (count - 1).clip(lower=1)) * std / np.sqrt(count)
        half = half.where(count >= 2)
        table[f"{name}_ppl"] = np.exp(mean)
        table[f"{name}_ci_low"], table[f"{name}_ci_high"] = np.exp(mean - half), np.exp(mean + half)
        table[f"{name}_std"] = by_entry[f"{name}_ppl"].std(ddof=1)  # of the seeds' perplexities, for reading
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


def failures(store: Store, track: str | None = None, competition: Competition | None = None,
             current_sources: dict[str, str] | None = None, classified: pd.DataFrame | None = None) -> pd.DataFrame:
    """Entries none of whose official seeds ended ok: their latest official result, with status and reason.

    Exploration runs that failed are listed on the entry's page and by `harness results --runs`.
    """
    frame = _of_track_and_division(classified, track, None) if classified is not None else \
        classified_runs(store, competition, current_sources, track=track)
    counted = frame[frame["counted"]]
    if counted.empty:
        return counted
    keys = [counted["entry"], counted["division"].fillna("-")]
    has_ok = (counted["status"] == RunStatus.OK.value).groupby(keys).transform("any")
    unranked = counted[~has_ok].sort_values("id")
    latest = unranked.groupby([unranked["entry"], unranked["division"].fillna("-")]).tail(1)
    return latest.reset_index(drop=True)


def pairwise(store: Store, first: list[int], second: list[int], split: str = "test") -> dict[str, float] | None:
    """Paired comparison of two sets of runs: bootstrap P(first better) and the paired t-test p."""
    a, b = sentence_nll(store, first, split), sentence_nll(store, second, split)
    if a is None or b is None or a.shape != b.shape:
        return None
    return {"p_first_better": prob_better(a, b), "t_test_pvalue": paired_t_pvalue(a, b),
            "mean_nll_difference": float((a - b).mean())}
