"""`harness`: the command line. A thin layer: it parses options, calls the library, and turns
`HarnessError`s into messages and exit codes.

Exit codes: 0 everything ran and scored; 1 a run (or a check) did not end ok; 2 bad usage or
options; 3 the harness could not work (data, database, entries); 130 interrupted (Ctrl-C); 143
terminated (SIGTERM), cleaned up the same way.
"""

from __future__ import annotations

import json
import math
import os
import signal
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

import harness
from harness.budget import RunLimits, format_bytes, parse_memory
from harness.config import load_competition
from harness.cpus import machine_cpus
from harness.data import DataSource, load_corpus
from harness.execution import lean_supervisor
from harness.executors import make_executor
from harness.entries import EntrySource, discover, parse_overrides, select, static_metadata
from harness.errors import ConfigError, EntryError, FailureKind, HarnessError, HparamError, RunStatus, StoreError, redact_url
from harness.store import Store
from harness.sandbox import Confinement, resolve_confinement
from harness.plan import make_plan
from harness.supervisor import (
    REUSE_DEFAULT, REUSE_NOTHING, REUSE_RETRY_FAILED, RunOutcome, RunRequest, Supervisor,
)

EXIT_RUN_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, systemd, a batch scheduler's end of job): stopped as Ctrl-C stops, cleaned up."""


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second one must not cut the clean-up short
    raise Terminated()


def _entry_dirs(submissions: str, baselines: str) -> dict[str, Path]:
    return {"submission": Path(submissions), "baseline": Path(baselines)}


def entry_dir_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--baselines", default="baselines", show_default=True, type=click.Path(file_okay=False),
                           help="Folder of baseline entries.")(command)
    return click.option("--submissions", default="submissions", show_default=True, type=click.Path(file_okay=False),
                        help="Folder of participants' entries.")(command)


def hparam_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--hparam", "hparams", multiple=True, metavar="KEY=VALUE",
                        help="Override a hyper-parameter of the entry (repeatable), e.g. --hparam lr=0.002.")(command)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu")
    return device


def positive_seconds(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    """--budget: a positive, finite number of seconds (0, negative, inf and nan are refused)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"must be a positive number of seconds, got {value}")
    return value


def absolute_data_dir() -> None:
    """Make a relative HARNESS_DATA_DIR absolute against the folder the command was started in.

    Done once, at entry, before anything changes directory or starts a child with this environment.
    (`--data-dir` is resolved by click at parse time, which is the same moment.)
    """
    value = os.environ.get("HARNESS_DATA_DIR")
    if value:
        os.environ["HARNESS_DATA_DIR"] = str(Path(value).expanduser().resolve())


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(harness.__version__, prog_name="harness")
def main() -> None:
    """ptb-harness: train and score Penn Treebank language models under enforced budgets."""
    absolute_data_dir()
    # Text a participant wrote (a reason, a name) may hold what the terminal cannot encode (a lone
    # surrogate): printed escaped, never a UnicodeEncodeError that stops the harness.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    # Without this, SIGTERM ends Python at once: no run is recorded `interrupted`, no sandbox is
    # cleared, and on cgroup v1 a frozen scorer would outlive it.
    signal.signal(signal.SIGTERM, _on_sigterm)


@main.command()
@click.argument("names", nargs=-1)
@click.option("--all", "run_all", is_flag=True, help="Run every entry in submissions/ and baselines/.")
@click.option("--budget", type=float, metavar="SECONDS", callback=positive_seconds,
              help="Training time budget [default: the division's; 600 on cpu, 300 on cuda].")
@click.option("--memory", help="Peak memory budget, e.g. 8GiB [default: the division's].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--division", "division_name", help="Division of the competition config [default: by device].")
@click.option("--seed", type=int, default=0, show_default=True, help="First seed; --seeds N runs seed .. seed+N-1.")
@click.option("--seeds", type=click.IntRange(min=1), help="Runs per entry [default: the config's, 1].")
@hparam_option
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads per run [default: all cores].")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs at once on this machine (local executor), each on its own CPUs: give --threads too, "
                   "as many run side by side as fit the CPUs.")
@click.option("--evals", default="auto", show_default=True, metavar="N|auto",
              help="Validation passes during training; auto: the competition's number at the division's budget, "
                   "scaled down with a shorter budget (at least 1).")
@click.option("--dry-run", is_flag=True, help="Print the plan (runs, reused results, estimated time) and stop.")
@click.option("--force", is_flag=True, help="Run again even where a finished result of the same key exists.")
@click.option("--retry-failed", is_flag=True, help="Run again failed, timed-out and out-of-memory results.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Competition config [default: ./competition.toml if present].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=str, resolve_path=True),
              help="Folder with ptb.*.txt, remembered in the cache once verified [env: HARNESS_DATA_DIR].")
@click.option("--db", default="harness.sqlite", show_default=True, envvar="HARNESS_DB",
              help="Results database: a SQLite path or a SQLAlchemy URL [env: HARNESS_DB].")
@click.option("--runs-dir", default=".harness/runs", show_default=True, type=click.Path(file_okay=False),
              help="Where each run's log and per-token scores are kept.")
@entry_dir_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per run on stdout.")
@click.option("--sandbox", type=click.Choice(["auto", "bwrap", "none"]), default="auto", show_default=True,
              help="Isolate each run with bubblewrap (auto: when it works here).")
@click.option("--site/--no-site", "with_site", default=True, show_default=True,
              help="After --all, rebuild the static site into ./site.")
@click.option("--executor", "executor_name", type=click.Choice(["local", "ray"]),
              help="Where runs execute: local (one after another here) or ray (one Ray task each, "
                   "concurrently) [default: the config's [cluster] executor, else local].")
@click.option("--ray-address", metavar="ADDR",
              help="Ray cluster for --executor ray, e.g. 10.0.0.1:6379 [default: the config's, else "
                   "RAY_ADDRESS, else auto].")
def run(names: tuple[str, ...], run_all: bool, budget: float | None, memory: str | None, device: str,
        division_name: str | None, seed: int, seeds: int | None, hparams: tuple[str, ...], threads: int | None,
        jobs: int, evals: str, dry_run: bool, force: bool, retry_failed: bool, config_path: str | None, data_dir: str | None,
        db: str, runs_dir: str, submissions: str, baselines: str, as_json: bool, sandbox: str,
        with_site: bool, executor_name: str | None, ray_address: str | None) -> None:
    """Train and score entries (NAMES, or paths to .py files), each in its own process.

    A result is reused when a finished run has the same key (entry source, hyper-parameters, seed,
    budget, memory, device and hardware, data, harness version); --force and --retry-failed rerun.
    """
    with _errors_to_exit():
        if bool(names) == run_all:
            raise click.UsageError("give entry NAMES or --all (not both)")
        lean_supervisor()
        competition = load_competition(config_path)
        executor_name = executor_name or competition.executor
        if division_name and device == "auto":
            device = competition.division_for("", division_name).device
        # On a cluster the nodes have the GPUs, not necessarily the driver.
        chosen_device = device if executor_name == "ray" and device != "auto" else resolve_device(device)
        division = competition.division_for(chosen_device, division_name)
        if division.device != chosen_device:
            raise ConfigError(f"division {division.name!r} is for {division.device}, not {chosen_device}")
        available = discover(_entry_dirs(submissions, baselines))
        entries = list(available.values()) if run_all else select(list(names), available)
        if not entries:
            raise EntryError(f"no entries found in {submissions}/ or {baselines}/; create one with `harness new NAME`")
        entries = _in_competition_tracks(entries, competition.tracks)
        if not entries:
            raise EntryError(f"none of the entries is in the competition's tracks ({', '.join(competition.tracks)}); "
                             f"see `tracks` in {competition.source}")
        seconds = division.budget if budget is None else budget
        limits = RunLimits(seconds=seconds, memory_bytes=parse_memory(memory or division.memory),
                           evals=_evals(evals, competition.evals, seconds, division.budget))
        source = DataSource.from_options(data_dir)
        confinement = _confinement(sandbox)
        if confinement.sandbox == "none" and sandbox == "auto":
            entries = [_refuse_unsandboxed(entry, confinement) for entry in entries]
        # Pinned hyper-parameters (competition.toml) first, --hparam on top: typed against each schema.
        pairs = {entry.name: competition.pinned_pairs(entry.name) + list(hparams) for entry in entries}
        overrides, entries = _typed_overrides(entries, pairs, confinement)
        seed_list = [seed + i for i in range(seeds or competition.seeds)]
        config = {"competition": competition.as_dict(), "division": division.name,
                  "options": {"budget": limits.seconds, "memory_bytes": limits.memory_bytes, "evals": limits.evals,
                              "seeds": seed_list, "device": chosen_device, "hparams": list(hparams)}}
        reuse = REUSE_NOTHING if force else REUSE_RETRY_FAILED if retry_failed else REUSE_DEFAULT
        store = open_store(db)  # before the data: a database that cannot be written fails in a second
        _check_writable(store)
        abandoned = store.mark_abandoned()
        if abandoned:
            click.echo(f"marked {abandoned} run(s) left unfinished by a stopped harness as interrupted", err=True)
        corpus = load_corpus(source)
        run_threads = threads or len(machine_cpus()) or 1
        requests = [RunRequest(entry=entry, hparams=overrides.get(entry.name, {}), seed=run_seed,
                               device=chosen_device, threads=run_threads, limits=limits,
                               division=division.name, config=config, problem=entry.problem,
                               hardware=_hardware_class(division, executor_name))
                    for entry in entries for run_seed in seed_list]
        executor = make_executor(executor_name, confinement, Path(runs_dir),
                                 ray_address or competition.ray_address, sandbox, jobs)
        side_by_side = _side_by_side(jobs, run_threads, executor_name)
        plan = make_plan(open_store(db, read_only=True), requests, dict(corpus.checksums), reuse, side_by_side)
        click.echo(plan.describe(division.name), err=True)
        if dry_run:
            return
        view = ProgressView(as_json, plan, concurrent=side_by_side > 1 or executor_name != "local")
        with Supervisor(store, corpus, Path(runs_dir), on_event=view.on_event, confinement=confinement,
                        executor=executor) as supervisor:
            if executor.name != "local":
                click.echo(f"runs placed on {executor.describe()}", err=True)
            outcomes = supervisor.run_all(requests, reuse)
        view.summary(outcomes, db)
        if run_all and with_site:
            written = _build_site(store, Path("site"), None, config_path, None,
                                  {entry.name: entry.source_hash for entry in available.values()})
            click.echo(f"site rebuilt: {len(written)} files in site/", err=True)
        if any(outcome.status is not RunStatus.OK for outcome in outcomes):
            sys.exit(EXIT_RUN_FAILED)


def _side_by_side(jobs: int, threads: int, executor: str) -> int:
    """Runs the local executor has out at once: --jobs, as many as fit this machine's CPUs with
    `threads` each (said when that is fewer than asked)."""
    if executor != "local":
        return 1
    cpus = len(machine_cpus())
    fit = max(1, cpus // max(1, min(threads, cpus)))
    if jobs > fit:
        click.echo(f"--jobs {jobs}: runs of {threads} thread(s) fit {fit} at a time on this machine's {cpus} CPU(s) "
                   "(no two runs share a core); lower --threads to run more at once", err=True)
    return min(jobs, fit)


def _hardware_class(division: Any, executor: str) -> str | None:
    """The hardware class in the run keys: the division's declared one; else this machine's, except
    for CUDA runs placed on a cluster, whose GPUs the driver may not have: keyed by the division."""
    if division.hardware:
        return division.hardware
    if executor == "ray" and division.device == "cuda":
        return f"division:{division.name}"
    return None


def _evals(value: str, competition_evals: int, seconds: float, division_seconds: float) -> int:
    """`auto`: the competition's passes at the division's budget, proportionally fewer (at least 1) below it."""
    if value == "auto":
        if seconds >= division_seconds:
            return competition_evals
        return max(1, min(competition_evals, round(competition_evals * seconds / division_seconds)))
    try:
        count = int(value)
    except ValueError:
        raise ConfigError(f"--evals must be a number of validation passes or auto, got {value!r}") from None
    if count < 0:
        raise ConfigError(f"--evals must be >= 0, got {count}")
    return count


def _in_competition_tracks(entries: list[EntrySource], tracks: tuple[str, ...]) -> list[EntrySource]:
    """The entries whose track the competition config lists; says which were left out and why."""
    kept = []
    for entry in entries:
        track = static_metadata(entry)["track"]
        if track in tracks:
            kept.append(entry)
        else:
            click.echo(f"skipped {entry.name}: its track {track!r} is not in the competition's tracks "
                       f"({', '.join(tracks)})", err=True)
    return kept


def open_store(db: str, read_only: bool = False) -> Store:
    """The results database; a missing optional driver is named with the extra that installs it.
    Read-only stores (results, show, site) never take SQLite's write lock."""
    try:
        return Store(db, read_only=read_only)
    except StoreError as exc:
        missing = exc.__cause__ if isinstance(exc.__cause__, ImportError) else None
        if missing is not None and "psycopg" in str(missing):
            raise StoreError(f"cannot open the results database {redact_url(db)}: the PostgreSQL driver psycopg "
                             "is not installed; install it with pip install -e '.[postgres]'") from exc
        raise


def _check_writable(store: Store) -> None:
    """A write that changes nothing, so a read-only or locked database fails now, not after the data
    has loaded and a run has trained (SQLite opens a read-only file without complaint)."""
    from sqlalchemy import text

    with store.session() as session:
        session.execute(text("UPDATE harness_meta SET value = value WHERE key = 'schema_version'"))


def _confinement(mode: str) -> Confinement:
    """The sandbox for this invocation; said out loud when it is weaker than bubblewrap."""
    confinement = resolve_confinement(mode)
    if confinement.note:
        click.echo(f"warning: {confinement.note}" if confinement.sandbox == "none" else confinement.note, err=True)
    return confinement


def _refuse_unsandboxed(entry: EntrySource, confinement: Confinement) -> EntrySource:
    """Without a working sandbox, `auto` runs baselines only: participant code needs an explicit --sandbox none."""
    if entry.kind == "baseline" or entry.problem:
        return entry
    problem = (f"not run: no working sandbox on this machine ({confinement.note}); install bubblewrap, or pass "
               "--sandbox none to run participant code unconfined")
    return EntrySource(entry.name, entry.path, entry.kind, entry.source, entry.source_hash, problem)


def _typed_overrides(entries: list[EntrySource], pairs: dict[str, list[str]],
                     confinement: Confinement) -> tuple[dict[str, dict[str, Any]], list[EntrySource]]:
    """Type `--hparam` and pinned pairs against the schemas of the entries that have any (each read in
    its own sandboxed process: importing runs its code). Returns the typed values, and the entries
    with a `problem` where the schema could not be read: such an entry fails alone, visibly, rather
    than running with its organiser's values silently dropped."""
    from harness.checking import describe_entries

    wanted = [entry for entry in entries if not entry.problem and pairs.get(entry.name)]
    descriptions = describe_entries(wanted, confinement) if wanted else {}
    typed: dict[str, dict[str, Any]] = {}
    kept: list[EntrySource] = []
    for entry in entries:
        description = descriptions.get(entry.name)
        if description is not None and description["ok"]:
            try:
                typed[entry.name] = parse_overrides(pairs[entry.name], description["schema"], entry.name)
            except HparamError as exc:
                if len(entries) == 1:  # the one entry asked for: a usage error, said at once
                    raise
                # Among several, one entry's schema (its own word) cannot stop the others.
                entry = EntrySource(entry.name, entry.path, entry.kind, entry.source, entry.source_hash, str(exc))
        elif description is not None:
            problem = f"its hyper-parameters could not be read to apply {' '.join(pairs[entry.name])}: " \
                      f"[{description['kind']}] {description['reason']}"
            entry = EntrySource(entry.name, entry.path, entry.kind, entry.source, entry.source_hash, problem)
        kept.append(entry)
    return typed, kept


class ProgressView:
    """Progress on stderr: run k of n with its phase and bar, the time left, a summary at the end."""

    def __init__(self, as_json: bool, plan: Any, concurrent: bool = False) -> None:
        self.as_json = as_json
        self.tty = sys.stderr.isatty()
        self.plan = plan
        self.total = len(plan.to_run)
        self.started = 0
        self.left_seconds = plan.seconds
        self.current_estimate = 0.0
        self.run_began = time.monotonic()
        self.budget = 0.0
        self.last_draw = 0.0
        self.valid_ppl: float | None = None
        self.placed = False
        self.concurrent = concurrent
        """Runs out at once (a cluster, --jobs): one plain line per event instead of a redrawn bar."""
        self.nodes: dict[int, str] = {}

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "run_started":
            self.started += 1
            self.current_estimate = self._estimate(event["entry"])
            self.run_began = time.monotonic()
            self.budget, self.valid_ppl = float(event["budget"]), None
            self.placed = self.concurrent
            retry = " (retry)" if event.get("attempt", 1) > 1 else ""
            click.echo(f"run {self.started} of {self.total} (id {event['run_id']}): {event['entry']} "
                       f"(budget {self.budget:.0f} s; about {_clock(self.left_seconds)} left in all){retry}", err=True)
        elif self.placed and kind in ("placed", "phase", "curve", "progress"):
            self._placed_line(event)
        elif kind == "curve":
            self.valid_ppl = event.get("valid_ppl")
            self._draw({**event, "phase": "validation"}, force=True)
        elif kind in ("progress", "phase"):
            self._draw(event, force=kind == "phase")
        elif kind in ("run_finished", "run_reused"):
            if kind == "run_finished":
                self.left_seconds = max(0.0, self.left_seconds - self.current_estimate)
                if self.tty and not self.placed:
                    click.echo("", err=True)
            prefix = "reused " if kind == "run_reused" else ""
            line = prefix + _outcome_line(event)
            if kind == "run_reused" and event["status"] not in (RunStatus.OK.value, RunStatus.INVALID.value):
                line += "  (a reused failure: --retry-failed runs it again)"
            click.echo(line, err=True)
            if self.as_json:
                click.echo(json.dumps(event))
        elif kind == "waiting_cpus":
            click.echo(f"run {event['run_id']} ({event['entry']}): waiting for {event['threads']} CPU(s); every "
                       "CPU is held by another run on this machine (runs never share a core)", err=True)
        elif kind == "lease_lost":
            click.echo(f"run {event['run_id']}: {event['reason']}", err=True)
        elif kind == "run_busy":
            click.echo(f"{event['entry']} (seed {event['seed']}): run {event['run_id']} is in progress in "
                       f"another harness process; left to it", err=True)

    def _estimate(self, entry: str) -> float:
        return next((run.seconds for run in self.plan.to_run if run.request.entry.name == entry), 0.0)

    def _placed_line(self, event: dict[str, Any]) -> None:
        """Runs out at once on a cluster: one plain line per event, naming its run, node and phase
        (a redrawn bar would mix the runs)."""
        run = f"run {event['run_id']} ({event['entry']})"
        kind = event["type"]
        if kind == "placed":
            self.nodes[event["run_id"]] = event["node"]
            cpus = f" (CPUs {event['cpus']})" if event.get("cpus") else ""
            click.echo(f"{run}: placed on {event['node']}{cpus}", err=True)
            return
        where = self.nodes.get(event["run_id"], "?")
        if kind == "phase":
            click.echo(f"{run} on {where}: {event['phase']}", err=True)
        elif kind == "curve":
            click.echo(f"{run} on {where}: valid ppl {event['valid_ppl']:.1f} at {event['train_seconds']:.0f} s",
                       err=True)
        elif self.tty or time.monotonic() - self.last_draw > 10:  # progress: sparse unless on a terminal
            self.last_draw = time.monotonic()
            click.echo(f"{run} on {where}: {event.get('phase', 'training')}, step {event.get('step')}, "
                       f"{float(event.get('train_seconds') or 0):.0f} s", err=True)

    def _draw(self, event: dict[str, Any], force: bool) -> None:
        now = time.monotonic()
        if not (force or (self.tty and now - self.last_draw > 0.2)):
            return
        self.last_draw = now
        phase = event.get("phase") or "training"
        elapsed = float(event.get("train_seconds") or 0.0)
        width = 24
        filled = min(width, int(width * elapsed / self.budget)) if self.budget else 0
        bar = "#" * filled + "-" * (width - filled)
        left = max(0.0, self.left_seconds - (now - self.run_began))
        parts = [f"  {phase:<10} [{bar}] {elapsed:6.1f}/{self.budget:.0f} s"]
        if phase == "training":
            parts.append(f"step {event.get('step', event.get('steps', '-'))}")
            if event.get("loss") is not None:
                parts.append(f"loss {event['loss']:.3f}")
        if self.valid_ppl is not None:
            parts.append(f"valid ppl {self.valid_ppl:.1f}")
        parts.append(f"~{_clock(left)} left")
        line = "  ".join(parts)
        if self.tty:
            click.echo("\r" + line.ljust(110)[:110], err=True, nl=False)
        else:
            click.echo(line, err=True)

    def summary(self, outcomes: list[RunOutcome], db: str) -> None:
        ok = sum(outcome.status is RunStatus.OK for outcome in outcomes)
        click.echo(f"{ok} of {len(outcomes)} run(s) ok; results in {redact_url(db)}", err=True)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def _outcome_line(event: dict[str, Any]) -> str:
    head = f"run {event['run_id']}: {event['entry']}: {event['status']}"
    if event["status"] == RunStatus.OK.value:
        return (f"{head}  test ppl {event['test_ppl']:.2f} ({event['test_tokens']:,} tokens)  "
                f"valid ppl {event['valid_ppl']:.2f} ({event['valid_tokens']:,} tokens)  "
                f"peak memory {format_bytes(event.get('peak_memory_bytes'))}")
    return f"{head} [{event.get('failure')}] {event.get('reason')}"


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@hparam_option
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--timeout", type=click.FloatRange(min=1, max=3600), default=120.0, show_default=True,
              help="Seconds of training before giving up.")
@click.option("--sandbox", type=click.Choice(["auto", "bwrap", "none"]), default="auto", show_default=True,
              help="Isolate the entry with bubblewrap (as a run is).")
def check(path: str, hparams: tuple[str, ...], device: str, timeout: float, sandbox: str) -> None:
    """Validate an entry in seconds on synthetic data: the whole life cycle of a run, sandboxed as a run is."""
    from harness.checking import check_entry

    with _errors_to_exit():
        lean_supervisor()
        entry = EntrySource.read(Path(path), "submission")
        confinement = _confinement(sandbox)
        if confinement.sandbox == "none" and sandbox == "auto":
            raise ConfigError(f"no working sandbox here ({confinement.note}); install bubblewrap, or pass "
                              "--sandbox none to run this entry's code unconfined")
        typed, (described,) = _typed_overrides([entry], {entry.name: list(hparams)}, confinement)
        if described.problem:
            raise EntryError(f"{path}: {described.problem}")
        overrides = typed.get(entry.name, {})
        _, found = check_entry(entry, overrides, resolve_device(device), confinement, timeout)
        for finding in found:
            mark = click.style("ok  ", fg="green") if finding["ok"] else click.style("FAIL", fg="red")
            detail = f": {finding['detail']}" if finding.get("detail") else ""
            click.echo(f"{mark} {finding['check']}{detail}")
            if not finding["ok"]:
                for extra in ("traceback", "log"):
                    if finding.get(extra):
                        click.echo(finding[extra][-3000:].rstrip(), err=True)
        failed = [f for f in found if not f["ok"]]
        if failed:
            click.echo(f"{len(failed)} problem(s) found in {path}", err=True)
            sys.exit(EXIT_RUN_FAILED)
        click.echo(f"{path} passes every check")


@main.command()
@click.argument("name")
@click.option("--submissions", default="submissions", show_default=True, type=click.Path(file_okay=False))
def new(name: str, submissions: str) -> None:
    """Write a fresh entry NAME.py into submissions/ from the template."""
    with _errors_to_exit():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ConfigError(f"entry name {name!r} must be lower case letters, digits and _ (e.g. my_lstm)")
        folder = Path(submissions)
        template = folder / "_template.py"
        target = folder / f"{name}.py"
        if not template.is_file():
            raise EntryError(f"no template at {template}; run `harness new` from the repository root")
        if target.exists():
            raise EntryError(f"{target} already exists; choose another name or edit it")
        shutil.copyfile(template, target)
        click.echo(f"wrote {target}: edit it, then `harness check {target}` and `harness run {name} --budget 60`")


@main.command(name="list")
@entry_dir_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry.")
def list_entries(submissions: str, baselines: str, as_json: bool) -> None:
    """List the entries `harness run --all` would run (read from source, not imported)."""
    with _errors_to_exit():
        for entry in discover(_entry_dirs(submissions, baselines)).values():
            meta = static_metadata(entry)
            if as_json:  # `name` is the key runs are recorded under; `display_name` what the source says
                click.echo(json.dumps({**meta, "name": entry.name, "display_name": meta["name"], "kind": entry.kind,
                                       "path": str(entry.path), "problem": entry.problem}))
            else:
                note = f"  [will fail: {entry.problem}]" if entry.problem else ""
                click.echo(f"{entry.name:<20} {entry.kind:<10} {meta['description'][:70]}{note}")


@main.command()
@click.option("--db", default="harness.sqlite", show_default=True, envvar="HARNESS_DB", help="Results database.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to a file (required for parquet).")
@click.option("--entry", help="Only this entry.")
@click.option("--status", type=click.Choice([s.value for s in RunStatus]), help="List runs with this status.")
@click.option("--track", help="Only this track (causal, mlm).")
@click.option("--division", help="Only this division.")
@click.option("--runs", "list_runs", is_flag=True, help="List individual runs instead of the ranking.")
@click.option("--phase", type=click.Choice(["open", "final"]),
              help="open: rank on validation; final: on test [default: the config's].")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Competition config.")
@entry_dir_options
def results(db: str, fmt: str, output: str | None, entry: str | None, status: str | None, track: str | None,
            division: str | None, list_runs: bool, phase: str | None, config_path: str | None, submissions: str,
            baselines: str) -> None:
    """The ranking per track and division (official configurations only, mean and 95% interval over
    seeds, ties marked, published results in place), or the runs, each official or exploration."""
    from harness import report
    from harness.results import classified_runs, failures, leaderboard, load_references

    with _errors_to_exit():
        store = open_store(_existing_db(db), read_only=True)
        competition = load_competition(config_path)
        chosen_phase = phase or competition.phase
        sources = _current_sources(submissions, baselines)
        if list_runs or status:
            frame = classified_runs(store, competition, sources, entry=entry, status=status, track=track,
                                    division=division)
            report.emit_runs(frame, fmt, output)
            return
        classified = classified_runs(store, competition, sources, track=track)  # once, for both tables
        rankings = [ranking for ranking in leaderboard(store, chosen_phase, track=track, division=division,
                                                       competition=competition, current_sources=sources,
                                                       references=load_references(), classified=classified)
                    if ranking.track in competition.tracks]
        if entry:
            for ranking in rankings:
                ranking.table = ranking.table[ranking.table["entry"] == entry]
        unranked = failures(store, track, competition, sources, classified=classified)
        report.emit_rankings(rankings, unranked, fmt, output, chosen_phase)


def _current_sources(submissions: str, baselines: str) -> dict[str, str]:
    """entry -> source hash of its file on disk (entries no longer on disk fall back to their newest run)."""
    return {name: entry.source_hash for name, entry in discover(_entry_dirs(submissions, baselines)).items()}


@main.command()
@click.option("--db", default="harness.sqlite", show_default=True, envvar="HARNESS_DB", help="Results database.")
@click.option("--out", "out_dir", default="site", show_default=True, type=click.Path(file_okay=False),
              help="Folder to write the site into.")
@click.option("--phase", type=click.Choice(["open", "final"]), help="[default: the config's]")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Competition config.")
@click.option("--templates", type=click.Path(file_okay=False), help="Folder with templates/ and static/.")
@entry_dir_options
def site(db: str, out_dir: str, phase: str | None, config_path: str | None, templates: str | None,
         submissions: str, baselines: str) -> None:
    """Build the static leaderboard site from the results database."""
    with _errors_to_exit():
        written = _build_site(open_store(_existing_db(db), read_only=True), Path(out_dir), phase, config_path,
                              templates, _current_sources(submissions, baselines))
        click.echo(f"wrote {len(written)} files to {out_dir}/ (open {Path(out_dir) / 'index.html'})")


def _build_site(store: Store, out_dir: Path, phase: str | None, config_path: str | None,
                templates: str | None, current_sources: dict[str, str] | None = None) -> list[Path]:
    from harness.site import LEADERBOARD_DIR, SiteOptions, build_site

    competition = load_competition(config_path)
    options = SiteOptions(out_dir=out_dir, phase=phase or competition.phase, competition_name=competition.name,
                          templates=Path(templates) if templates else LEADERBOARD_DIR, tracks=competition.tracks,
                          competition=competition, current_sources=current_sources)
    return build_site(store, options)


@main.command()
@click.option("--dir", "folder", default="site", show_default=True, type=click.Path(exists=True, file_okay=False))
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port on 127.0.0.1 (0: any free port).")
def serve(folder: str, port: int) -> None:
    """Preview the built site on http://127.0.0.1:PORT (localhost only)."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=folder)
    with _errors_to_exit():
        try:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        except OSError as exc:
            raise ServeError(f"cannot serve on 127.0.0.1:{port}: {exc.strerror or exc}; "
                             "another program holds the port: pick another with --port (0 for any free one)") from exc
    with server:
        click.echo(f"serving {folder}/ on http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C to stop)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            click.echo("stopped")


class ServeError(HarnessError):
    """`harness serve` could not listen (the port is taken or not allowed)."""


@main.command()
@click.argument("run_id", type=int)
@click.option("--db", default="harness.sqlite", show_default=True, envvar="HARNESS_DB", help="Results database.")
@click.option("--source", "with_source", is_flag=True, help="Print the entry's source code too.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Competition config.")
@entry_dir_options
def show(run_id: int, db: str, with_source: bool, config_path: str | None, submissions: str, baselines: str) -> None:
    """Everything about one run: official or exploration, config, environment, curve, checks, error, log tail."""
    from harness import report
    from harness.results import classified_runs

    with _errors_to_exit():
        store = open_store(_existing_db(db), read_only=True)
        run = store.get_run(run_id)
        if run is None:
            raise EntryError(f"no run {run_id} in {redact_url(db)}; `harness results --runs` lists them")
        runs = classified_runs(store, load_competition(config_path), _current_sources(submissions, baselines),
                               entry=run.entry)
        standing = runs[runs["id"] == run_id].iloc[0].to_dict()
        click.echo(report.describe_run(run, with_source, standing))


@main.command()
@click.argument("run_id", type=int)
@click.option("--reason", required=True, help="Why the run is disqualified; shown on the site and in results.")
@click.option("--db", default="harness.sqlite", show_default=True, envvar="HARNESS_DB", help="Results database.")
def disqualify(run_id: int, reason: str, db: str) -> None:
    """Mark run RUN_ID invalid (an organiser's decision), with a reason kept in the database.

    The run leaves the rankings; its entry is listed under "Not ranked" with the kind
    `disqualified` and the reason. The run's scores stay recorded.
    """
    with _errors_to_exit():
        if not reason.strip():
            raise ConfigError("--reason must say why the run is disqualified")
        store = open_store(_existing_db(db))
        run = store.get_run(run_id)
        if run is None:
            raise EntryError(f"no run {run_id} in {redact_url(db)}; `harness results --runs` lists them")
        if run.status == RunStatus.RUNNING.value:  # its driver's result would be refused, and lost with it
            raise EntryError(f"run {run_id} is still running; disqualify it once it has finished")
        kind = FailureKind.DISQUALIFIED
        store.update_run(run_id, status=kind.status.value, failure=kind.value,
                         reason=f"disqualified by the organiser: {reason.strip()}")
        click.echo(f"run {run_id} disqualified: {reason.strip()}")


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=str, resolve_path=True),
              help="Folder with ptb.*.txt [env: HARNESS_DATA_DIR; default: the cache].")
@click.option("--db", default="harness.sqlite", show_default=True, envvar="HARNESS_DB", help="Results database.")
def doctor(data_dir: str | None, db: str) -> None:
    """Check what running the competition needs here: sandbox, cgroups, data, database, extras, GPU.

    Each line says ok or what is missing and what to do; exit 0 when everything needed is there.
    """
    from harness.doctor import diagnose

    with _errors_to_exit():
        findings = diagnose(DataSource.from_options(data_dir), db)
        for finding in findings:
            mark = {"ok": click.style("ok     ", fg="green"), "missing": click.style("MISSING", fg="red"),
                    "optional": click.style("--     ", fg="yellow")}[finding.state]
            click.echo(f"{mark} {finding.name}: {redact_url(finding.detail)}")
        needed = [f for f in findings if f.state == "missing"]
        if needed:
            click.echo(f"{len(needed)} thing(s) needed are missing; see the lines marked MISSING", err=True)
            sys.exit(EXIT_RUN_FAILED)
        click.echo("everything needed is here", err=True)


def _existing_db(db: str) -> str:
    if "://" not in db and not Path(db).is_file():
        raise StoreError(f"no results database at {db}; run `harness run` first or pass --db")
    return db


class _errors_to_exit:
    """Turn a `HarnessError` into `error: message` on stderr and its exit code; Ctrl-C into 130."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        from sqlalchemy.exc import OperationalError, SQLAlchemyError

        if isinstance(exc, StoreError) and isinstance(exc.__cause__, SQLAlchemyError):
            click.echo(f"error: {_database_problem(str(exc))}", err=True)  # one line, not SQLAlchemy's SQL dump
            sys.exit(exc.exit_code)
        if isinstance(exc, HarnessError):
            click.echo(f"error: {redact_url(str(exc))}", err=True)
            sys.exit(exc.exit_code)
        if isinstance(exc, OperationalError):  # raised mid-command: read-only, locked, gone away
            detail = str(exc.orig or exc)
            click.echo(f"error: {_database_problem('the results database failed: ' + detail)}", err=True)
            sys.exit(StoreError.exit_code)
        if isinstance(exc, Terminated):
            click.echo("\nterminated (SIGTERM): the runs in progress were recorded as interrupted", err=True)
            sys.exit(EXIT_TERMINATED)
        if isinstance(exc, KeyboardInterrupt):
            click.echo("\ninterrupted: the run in progress was recorded as interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        return False


def _database_problem(message: str) -> str:
    """The first line of a database failure, with what to do for the common ones."""
    line = message.strip().splitlines()[0] if message.strip() else "unknown database error"
    hint = ""
    if "readonly" in line or "read-only" in line or "unable to open database file" in line:
        hint = "; the database file or its folder is read-only (SQLite writes beside the file): " \
               "make both writable or pass another --db"
    elif "locked" in line:
        hint = "; another process holds a write lock on it: wait for it to finish or pass another --db"
    return redact_url(line + hint)


if __name__ == "__main__":
    main()
