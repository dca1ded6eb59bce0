"""The static leaderboard site, rendered from the results database alone.

`build_site` writes plain HTML (Jinja2, autoescaped, undefined variables are errors), SVG charts
made at build time, a stylesheet and a few lines of sorting JavaScript, `leaderboard.json` and
`leaderboard.csv`. Every link is relative, nothing is fetched from elsewhere: the site works from
`file://` and from any static host. During the `open` phase no test score appears anywhere.
"""

from __future__ import annotations

import json
import math
import hashlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import selectinload
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

import harness
from harness.budget import format_bytes
from harness.charts import line_chart, scatter_chart, short_number
from harness.config import Competition
from harness.errors import ConfigError, RunStatus
from harness.report import csv_safe, configuration_text, rankings_frame
from harness.results import REFERENCE, Ranking, classified_runs, failures, leaderboard, load_references
from harness.store import Run, Store

LEADERBOARD_DIR = Path(harness.__file__).resolve().parent.parent / "leaderboard"


@dataclass(frozen=True)
class SiteOptions:
    out_dir: Path
    phase: str
    competition_name: str = "PTB word level"
    templates: Path = LEADERBOARD_DIR
    tracks: tuple[str, ...] = ("causal", "mlm")
    """Only these tracks get a ranking (the competition config's `tracks`)."""
    competition: Competition = field(default_factory=Competition)
    """Its divisions, evals and pinned hyper-parameters define each entry's official configuration."""
    current_sources: dict[str, str] | None = None
    """entry -> source hash on disk, when the project folder is known; else each entry's newest run's."""


def entry_filename(entry: str) -> str:
    """A safe, stable and unique file name for an entry's page: names that clean to the same
    characters (`a/b`, `a_b`) still get different pages, from a digest of the exact name."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", entry)[:60] or "entry"
    if safe == entry:
        return f"{safe}.html"
    return f"{safe}-{hashlib.sha256(entry.encode()).hexdigest()[:10]}.html"


def _environment(templates: Path) -> jinja2.Environment:
    if not (templates / "templates").is_dir():
        raise ConfigError(f"no site templates in {templates}/templates; run from the repository or pass --templates")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates / "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(ppl=_ppl, count=_count, params=_params, text=_text, bytes=format_bytes, seconds=_seconds, date=_date,
                       number=short_number)
    return env


def build_site(store: Store, options: SiteOptions) -> list[Path]:
    """Render every page into `options.out_dir`; returns the files written."""
    env = _environment(options.templates)
    out = options.out_dir
    (out / "entries").mkdir(parents=True, exist_ok=True)
    runs = classified_runs(store, options.competition, options.current_sources)
    rankings = [ranking for ranking in leaderboard(store, options.phase, competition=options.competition,
                                                   current_sources=options.current_sources,
                                                   references=load_references(options.templates / "references.json"),
                                                   classified=runs)
                if ranking.track in options.tracks]
    frame = runs[runs["counted"]]
    failed = failures(store, competition=options.competition, current_sources=options.current_sources, classified=runs)
    common = {"competition": options.competition_name, "phase": options.phase,
              "split": "test" if options.phase == "final" else "valid", "harness_version": harness.__version__,
              "data_as_of": _date(runs["ended_at"].max()) if not runs.empty else "no runs yet"}
    written = [
        _render(env, "index.html", out / "index.html", root="", rankings=[_ranking_view(r) for r in rankings],
                failures=_failure_rows(failed), **common),
        _render(env, "history.html", out / "history.html", root="", records=_records(frame, common["split"]),
                best_chart=_history_chart(frame, common["split"]), **common),
        _render(env, "charts.html", out / "charts.html", root="", charts=_tradeoff_charts(rankings), **common),
    ]
    standing = {r["id"]: r for r in runs[["id", "configuration", "differs", "counted", "config_digest"]].to_dict("records")}
    for entry in sorted(runs["entry"].unique()) if not runs.empty else []:
        written.append(_entry_page(env, store, entry, standing, out, common))
    written += _machine_files(rankings, failed, out, options.phase)
    written += _static(options.templates, out)
    return written


def _render(env: jinja2.Environment, template: str, path: Path, **context: Any) -> Path:
    path.write_text(env.get_template(template).render(**context), encoding="utf-8")
    return path


# --- Index ------------------------------------------------------------------------------------


def _ranking_view(ranking: Ranking) -> dict[str, Any]:
    """Ranked entries and published results in score order; sorting by rank keeps a reference after the entry above it."""
    split = ranking.split
    rows = []
    merged = ranking.with_references()
    rank_above, since = 0, 0  # the rank of the entry above, the references since it
    for r in merged.to_dict("records"):
        reference = r["row_type"] == REFERENCE
        rank_above, since = (rank_above, since + 1) if reference else (int(r["rank"]), 0)
        rows.append({**r, "reference": reference, "rank": None if reference else int(r["rank"]),
                     "sort_rank": rank_above + since / (len(merged) + 1),
                     "page": "entries/" + entry_filename(r["entry"]), "score": r[f"{split}_ppl"],
                     "ci_low": r[f"{split}_ci_low"], "ci_high": r[f"{split}_ci_high"],
                     "accuracy": r[f"{split}_accuracy"]})
    return {"track": ranking.track, "division": ranking.division, "split": split, "rows": rows,
            "mlm": ranking.track == "mlm"}


def _failure_rows(failed: pd.DataFrame) -> list[dict[str, Any]]:
    return [{"entry": r["entry"], "status": r["status"], "failure": r["failure"] or "",
             "reason": _first_line(r["reason"]), "page": "entries/" + entry_filename(r["entry"]),
             "date": r["ended_at"]} for r in failed.to_dict("records")]


# --- Entry pages --------------------------------------------------------------------------------


def _entry_page(env: jinja2.Environment, store: Store, entry: str, standing: dict[int, dict[str, Any]], out: Path,
                common: dict[str, Any]) -> Path:
    """Every run of the entry, each marked official or exploration with what differs (`standing`: by run id)."""
    # Only the runs the classification saw: a run another driver starts meanwhile waits for the next build.
    runs = [run for run in _entry_runs(store, entry) if run.id in standing]
    counted = [run for run in runs if standing[run.id]["counted"]]
    latest = (counted or runs)[-1]  # the heading and source describe the ranked configuration where there is one
    views = [_run_view(run, common["phase"], standing[run.id]) for run in runs]
    # Every run that saved curve points draws them: an interrupted or timed-out run keeps its curve.
    with_curve = [run for run in runs if run.curve]
    curves = [
        line_chart("Validation perplexity against training time", "training seconds", "valid perplexity",
                   [(_curve_label(r), [(p.train_seconds, p.valid_ppl) for p in r.curve]) for r in with_curve]),
        line_chart("Validation perplexity against tokens trained", "tokens", "valid perplexity",
                   [(_curve_label(r), [(p.tokens, p.valid_ppl) for p in r.curve]) for r in with_curve]),
    ]
    source = highlight(latest.source, PythonLexer(), HtmlFormatter(linenos="table", cssclass="source"))
    return _render(env, "entry.html", out / "entries" / entry_filename(entry), root="../", entry=entry,
                   latest=latest, runs=views, curves=[c for c in curves if c is not None],
                   source_html=source, **common)


def _curve_label(run: Run) -> str:
    status = "" if run.status == RunStatus.OK.value else f", {run.status}"
    return f"run {run.id} (seed {run.seed}{status})"


def _entry_runs(store: Store, entry: str) -> list[Run]:
    """Every run of the entry, oldest first, with curves loaded."""
    with store.session() as session:
        return list(session.scalars(select(Run).where(Run.entry == entry).options(selectinload(Run.curve))
                                    .order_by(Run.id)).all())


def _run_view(run: Run, phase: str, standing: dict[str, Any]) -> dict[str, Any]:
    show_test = phase == "final"
    return {
        "id": run.id, "seed": run.seed, "status": run.status, "failure": run.failure, "reason": run.reason,
        "configuration": standing["configuration"], "counted": bool(standing["counted"]),
        "differs": standing["differs"], "config_digest": standing["config_digest"],
        "configuration_text": configuration_text(standing["configuration"], standing["differs"]),
        "valid_ppl": run.valid_ppl, "valid_tokens": run.valid_tokens,
        "test_ppl": run.test_ppl if show_test else None, "test_tokens": run.test_tokens if show_test else None,
        "valid_accuracy": run.valid_accuracy, "test_accuracy": run.test_accuracy if show_test else None,
        "steps": run.steps, "epochs": run.epochs, "tokens": run.tokens_trained, "train_seconds": run.train_seconds,
        "peak_memory": run.peak_memory_bytes, "params": run.param_count, "stop_reason": run.stop_reason,
        "checks": run.checks or {}, "hparams": run.hparams or {}, "traceback": run.traceback,
        "log_tail": run.log_tail if run.status != RunStatus.OK.value else None,
        "environment": {"device": run.device, "device name": run.device_name, "threads": run.threads,
                        "torch": run.torch_version, "python": run.python_version, "platform": run.platform,
                        "harness": run.harness_version, "git commit": run.git_commit,
                        "budget": f"{run.budget_seconds:.0f} s, {format_bytes(run.memory_limit_bytes)}",
                        "division": run.division, "started": _date(run.started_at),
                        "isolation": _isolation_text(run.isolation)},
    }


# --- History and trade-off charts ---------------------------------------------------------------


def _records(frame: pd.DataFrame, split: str) -> list[dict[str, Any]]:
    """Each counted official run that beat the best score so far of its track and division, in time order."""
    ok = frame[(frame["status"] == RunStatus.OK.value) & frame[f"{split}_ppl"].notna()].sort_values("ended_at")
    best: dict[tuple[str, str], float] = {}
    records = []
    for r in ok.to_dict("records"):
        key = (r["track"], r["division"] or "-")
        score = r[f"{split}_ppl"]
        if score < best.get(key, math.inf):
            records.append({"date": r["ended_at"], "entry": r["entry"], "track": key[0], "division": key[1],
                            "score": score, "previous": best.get(key), "page": "entries/" + entry_filename(r["entry"])})
            best[key] = score
    return records


def _history_chart(frame: pd.DataFrame, split: str) -> Any:
    records = _records(frame, split)
    lines: dict[str, list[tuple[float, float]]] = {}
    names: dict[str, list[str]] = {}
    for record in records:
        label = f"{record['track']} / {record['division']}"
        lines.setdefault(label, []).append((pd.Timestamp(record["date"]).timestamp(), record["score"]))
        names.setdefault(label, []).append(str(record["entry"]))
    return line_chart(f"Best {split} perplexity over time", "date (UTC)", f"{split} perplexity",
                      list(lines.items()), x_dates=True, tags=[names[label] for label in lines])


def _tradeoff_charts(rankings: list[Ranking]) -> list[Any]:
    charts = []
    for ranking in rankings:
        rows = ranking.table.to_dict("records")
        split = ranking.split
        where = f"{ranking.track} track, {ranking.division} division"
        for column, label in (("param_count", "parameters"), ("train_seconds", "training seconds")):
            # A count model has no parameters (0 or not recorded): it stays on the chart, at "0".
            items = [(0.0 if _missing(r[column]) else float(r[column]), float(r[f"{split}_ppl"]),
                      str(r["entry"]), "entries/" + entry_filename(r["entry"])) for r in rows]
            chart = scatter_chart(f"{split} perplexity against {label} ({where})", label, f"{split} perplexity", items)
            if chart is not None:
                charts.append(chart)
    return charts


# --- Machine-readable files and static assets ---------------------------------------------------


def _machine_files(rankings: list[Ranking], failed: pd.DataFrame, out: Path, phase: str) -> list[Path]:
    frame = rankings_frame(rankings)
    if phase != "final" and not frame.empty:  # test scores stay private until the final phase
        frame = frame.drop(columns=[c for c in frame.columns if c.startswith("test_")])
    frame = frame.drop(columns=["source_hash"], errors="ignore")
    csv_path, json_path = out / "leaderboard.csv", out / "leaderboard.json"
    csv_safe(frame).to_csv(csv_path, index=False)
    payload = {
        "phase": phase,
        "rankings": json.loads(frame.to_json(orient="records", date_format="iso")) if not frame.empty else [],
        "failures": [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
                     for row in failed[["entry", "status", "failure", "reason", "ended_at"]].to_dict("records")]
        if not failed.empty else [],
    }
    json_path.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    return [csv_path, json_path]


def _static(templates: Path, out: Path) -> list[Path]:
    target = out / "static"
    target.mkdir(exist_ok=True)
    written = []
    for path in sorted((templates / "static").iterdir()):
        shutil.copyfile(path, target / path.name)
        written.append(target / path.name)
    pygments_css = target / "source.css"
    pygments_css.write_text(HtmlFormatter(cssclass="source").get_style_defs(".source"), encoding="utf-8")
    return written + [pygments_css]


# --- Filters ------------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _ppl(value: Any) -> str:
    return "–" if _missing(value) else f"{value:.2f}"


def _count(value: Any) -> str:
    return "–" if _missing(value) else short_number(float(value)) if float(value) >= 1000 else f"{float(value):.0f}"


def _text(value: Any) -> str:
    """A text column that may be missing (None, or NaN once it went through pandas): "" then."""
    return "" if _missing(value) else str(value)


def _params(value: Any) -> str:
    """A parameter count; "n/a" for models without parameters (count models record 0)."""
    return "n/a" if _missing(value) or float(value) == 0 else _count(value)


def _seconds(value: Any) -> str:
    if _missing(value):
        return "–"
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def _date(value: Any) -> str:
    if _missing(value):
        return "–"
    return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M")


def _isolation_text(isolation: dict[str, Any] | None) -> str | None:
    if not isolation:
        return None
    sandbox = "bubblewrap sandbox" if isolation.get("sandbox") == "bwrap" else "process isolation only"
    memory = ("kernel memory limit (cgroup)" if isolation.get("memory_enforcement") == "cgroup"
              else "memory limit enforced by the supervisor's measurement")
    return f"{sandbox}; {memory}"


def _first_line(text: Any) -> str:
    return "" if _missing(text) else str(text).strip().splitlines()[0][:200] if str(text).strip() else ""
