"""Rendering results for the terminal and for machines (`harness results`, `harness show`)."""

from __future__ import annotations

import json
import math
from typing import Any

import click
import pandas as pd

from harness.budget import format_bytes
from harness.errors import ConfigError, RunStatus
from harness.results import DIGEST_ONLY_COLUMNS, EXPLORATION, REFERENCE, Ranking
from harness.store import Run

TABLE_COLUMNS = ["rank", "entry", "authors", "ppl", "95% CI", "seeds", "params", "tokens", "train s",
                 "peak mem", "device", "date"]


def rankings_frame(rankings: list[Ranking]) -> pd.DataFrame:
    """All rankings in one machine-readable frame, with track, division and split columns."""
    parts = []
    for ranking in rankings:
        table = ranking.with_references().drop(columns=["run_ids"])
        table.insert(0, "split", ranking.split)
        table.insert(0, "division", ranking.division)
        table.insert(0, "track", ranking.track)
        parts.append(table)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def emit_rankings(rankings: list[Ranking], failed: pd.DataFrame, fmt: str, output: str | None, phase: str) -> None:
    if fmt != "table":
        _emit_frame(rankings_frame(rankings), fmt, output)
        return
    lines = []
    for ranking in rankings:
        lines.append(f"== {ranking.track} track, {ranking.division} division: ranked on {ranking.split} "
                     f"perplexity ({phase} phase) ==")
        lines.append(_text_table(_display_rows(ranking)))
        lines.append("")
    if not rankings:
        lines.append("no finished runs yet: `harness run --all` scores every entry")
    if not failed.empty:
        lines.append("== not ranked: the latest run of these entries did not end ok ==")
        rows = [[r.entry, r.status, r.failure or "", _one_line(r.reason)] for r in failed.itertuples()]
        lines.append(_text_table([["entry", "status", "kind", "reason"]] + rows))
    lines.append("'=' marks an entry not separable from the one above it (paired bootstrap, P < 0.95).")
    lines.append("Only runs of each entry's official configuration rank; `harness results --runs` lists the others.")
    _write("\n".join(lines) + "\n", output)


def _display_rows(ranking: Ranking) -> list[list[str]]:
    split = ranking.split
    rows = [TABLE_COLUMNS]
    for r in ranking.with_references().itertuples():
        if r.row_type == REFERENCE:  # never numbered; only its published score and size are known
            rows.append(["-", str(r.entry), r.note, _number(getattr(r, f"{split}_ppl")), "-", "-",
                         _count(r.param_count), "-", "-", "-", "-", "-"])
            continue
        low, high = getattr(r, f"{split}_ci_low"), getattr(r, f"{split}_ci_high")
        interval = "-" if math.isnan(low) else f"{low:.2f}-{high:.2f}"
        mark = "=" if r.tied_with_above else ""
        rows.append([f"{mark}{r.rank}", str(r.entry), _one_line(r.authors, 24), f"{getattr(r, f'{split}_ppl'):.2f}",
                     interval, str(r.seeds), _count(r.param_count), _count(r.tokens_trained),
                     _number(r.train_seconds, 0), _bytes(r.peak_memory_bytes), str(r.device),
                     str(r.ended_at)[:10]])
    return rows


def emit_runs(frame: pd.DataFrame, fmt: str, output: str | None) -> None:
    """Runs from `results.classified_runs`: each official or exploration (with what differs)."""
    if fmt != "table":
        _emit_frame(frame.drop(columns=DIGEST_ONLY_COLUMNS, errors="ignore"), fmt, output)
        return
    header = ["id", "entry", "seed", "status", "valid ppl", "test ppl", "train s", "peak mem", "reason",
              "configuration"]
    rows = [header] + [
        [str(r.id), str(r.entry), str(r.seed), run_state(r.status, r.phase, r.elapsed_seconds),
         _number(r.valid_ppl), _number(r.test_ppl), _number(r.train_seconds, 0), _bytes(r.peak_memory_bytes),
         _one_line(r.reason, 50), configuration_text(r.configuration, r.differs)]
        for r in frame.itertuples()
    ]
    _write(_text_table(rows) + "\n", output)


def run_state(status: str, phase: Any, elapsed_seconds: Any) -> str:
    """`ok`, `failed`, ... or, for a run in flight, its phase and how long ago it started."""
    if status != RunStatus.RUNNING.value or _missing(phase):
        return str(status)
    return f"running: {phase}, {_duration(elapsed_seconds)} elapsed"


def configuration_text(configuration: str, differs: Any) -> str:
    """`official`, or `exploration: budget 60 (official 600); hparams lr=0.002`."""
    return f"{EXPLORATION}: {differs}" if configuration == EXPLORATION else str(configuration)


def _duration(seconds: Any) -> str:
    if _missing(seconds):
        return "?"
    seconds = float(seconds)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _emit_frame(frame: pd.DataFrame, fmt: str, output: str | None) -> None:
    frame = frame.copy()
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]) or frame[column].dtype == object:
            frame[column] = frame[column].map(lambda v: v.isoformat() if hasattr(v, "isoformat") else v)
        if fmt != "json" and frame[column].map(lambda v: isinstance(v, dict)).any():
            # csv and parquet cells are flat: a mapping (hyper-parameter overrides) as JSON text
            frame[column] = frame[column].map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v)
    if fmt == "csv":
        _write(csv_safe(frame).to_csv(index=False), output)
    elif fmt == "json":
        _write(frame.to_json(orient="records", indent=1) + "\n", output)
    elif fmt == "parquet":
        if not output:
            raise ConfigError("--format parquet writes binary: give a file with --output")
        frame.to_parquet(output, index=False)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula (=, +, -, @, tab, CR first) get a leading
    quote: names, authors and reasons are a participant's text."""
    def defuse(value: Any) -> Any:
        return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value

    return frame.apply(lambda column: column.map(defuse)
                       if pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column) else column)


def _write(text: str, output: str | None) -> None:
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        click.echo(text, nl=False)


def _text_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _bytes(value: Any) -> str:
    """Memory for a table cell: "-" where none was measured (a run in flight), never "nan GiB"."""
    return "-" if _missing(value) else format_bytes(float(value))


def _one_line(text: Any, limit: int = 100) -> str:
    if _missing(text):
        return ""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _number(value: Any, digits: int = 2) -> str:
    if _missing(value):
        return "-"
    return f"{value:.{digits}f}"


def _count(value: Any) -> str:
    if _missing(value):
        return "-"
    value = float(value)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def describe_run(run: Run, with_source: bool = False, standing: dict[str, Any] | None = None) -> str:
    """`harness show`: every recorded fact about a run, as readable text.

    `standing`: the run's row of `results.classified_runs` (configuration, differs, digest, phase).
    """
    standing = standing or {}
    state = run_state(run.status, standing.get("phase"), standing.get("elapsed_seconds"))
    out = [f"run {run.id}: {run.entry} ({run.entry_kind}, track {run.track}) — {state}"
           + (f" [{run.failure}]" if run.failure else "")]
    if run.reason:
        out.append(f"reason: {run.reason}")
    if standing:
        counted = " (counted in the ranking)" if standing.get("counted") else ""
        out.append(f"configuration: {configuration_text(standing['configuration'], standing['differs'])}{counted}")
        out.append(f"configuration digest: {standing['config_digest']}")
    sections = {
        "entry": {"name": run.display_name, "authors": run.authors, "description": run.description,
                  "path": run.entry_path, "source sha256": run.source_hash},
        "scores": {"valid perplexity": _number(run.valid_ppl), "valid tokens": run.valid_tokens,
                   "test perplexity": _number(run.test_ppl), "test tokens": run.test_tokens,
                   "valid accuracy": run.valid_accuracy, "test accuracy": run.test_accuracy},
        "training": {"seed": run.seed, "steps": run.steps, "epochs": run.epochs, "tokens": run.tokens_trained,
                     "train seconds": _number(run.train_seconds), "stopped by": run.stop_reason,
                     "parameters": run.param_count, "peak memory": _bytes(run.peak_memory_bytes)},
        "limits": {"division": run.division, "budget seconds": run.budget_seconds,
                   "memory": _bytes(run.memory_limit_bytes), "device": run.device, "threads": run.threads},
        "environment": {"device name": run.device_name, "hardware": run.hardware, "torch": run.torch_version,
                        "python": run.python_version, "platform": run.platform,
                        "harness": run.harness_version, "git commit": run.git_commit,
                        "isolation": run.isolation, **(run.environment or {})},
        "times": {"started": run.started_at, "ended": run.ended_at, "run key": run.run_key},
    }
    for title, values in sections.items():
        out.append(f"\n{title}:")
        out.extend(f"  {key}: {value}" for key, value in values.items() if value is not None)
    out.append("\nhyper-parameters: " + json.dumps(run.hparams, sort_keys=True))
    out.append("checks: " + json.dumps(run.checks or {}, sort_keys=True))
    out.append("evaluation protocol: " + json.dumps(run.eval_protocol or {}, sort_keys=True))
    out.append("data checksums: " + json.dumps(run.data_checksums or {}, sort_keys=True))
    if run.config:
        out.append("config: " + json.dumps(run.config, sort_keys=True))
    if run.curve:
        out.append("\nvalidation curve (train s, steps, tokens, perplexity):")
        out.extend(f"  {p.train_seconds:8.1f}  {p.steps:7d}  {p.tokens:10d}  {p.valid_ppl:10.2f}" for p in run.curve)
    if run.traceback:
        out.append("\ntraceback:\n" + run.traceback.rstrip())
    if run.log_tail:
        out.append("\nlog tail:\n" + run.log_tail.rstrip())
    if with_source:
        out.append("\nsource:\n" + run.source)
    return "\n".join(out) + "\n"
