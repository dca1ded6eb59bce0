"""`harness doctor`: what running the competition needs on this machine, and what is missing.

Each check returns a `Finding`: `ok`, `missing` (something a run needs; the command exits 1) or
`optional` (the harness works without it, with less: no kernel memory ceiling, no GPU division,
no PostgreSQL). Every finding that is not ok says what to do. Nothing is changed: the database
is only read, the data is verified where it is and never downloaded (verified --data-dir files are
remembered in the cache, as by every command), and a cgroup probe is removed at once.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from harness.data import SPLITS, DataSource, resolve_files
from harness.errors import DataError, redact_url

CONTROLLERS = ("memory", "pids", "cpu", "freezer")
CGROUP_ROOT = Path("/sys/fs/cgroup")
OPTIONAL_EXTRAS = {  # module: (extra, what it is for)
    "psycopg": ("postgres", "PostgreSQL results databases (--db postgresql+psycopg://...)"),
    "ray": ("ray", "running on several machines"),
}


@dataclass(frozen=True)
class Finding:
    name: str
    state: str
    """`ok`, `missing` (needed) or `optional` (works without, with less)."""
    detail: str


def diagnose(source: DataSource, db: str) -> list[Finding]:
    """Every check, in the order a reader fixes things."""
    return [check_sandbox(), *check_cgroups(), check_data(source), check_database(db), *check_extras(), check_gpu()]


def check_sandbox() -> Finding:
    from harness.sandbox import bwrap_problem

    problem = bwrap_problem()
    if problem is None:
        return Finding("sandbox", "ok", "bubblewrap isolates runs here (--sandbox auto uses it)")
    return Finding("sandbox", "missing", f"{problem}; participants' entries need it (apt-get install bubblewrap), "
                   "or run them unsandboxed with --sandbox none on a machine you do not mind them reaching")


def cgroup_layout(proc_cgroup: str) -> tuple[int, dict[str, str]]:
    """(version, {controller: this process's path in it}) from the text of /proc/self/cgroup.

    Version 1 when any named controller is listed (a hybrid machine's empty v2 hierarchy adds
    nothing), else 2; for version 2 the single path is under the key "".
    """
    paths: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            paths[controller] = parts[2]
    named = [c for c in paths if c and not c.startswith("name=")]
    return (1 if named else 2), paths


def check_cgroups(root: Path = CGROUP_ROOT) -> list[Finding]:
    """The cgroup version and, per controller the harness uses, whether a run can get its own group."""
    try:
        version, paths = cgroup_layout(Path("/proc/self/cgroup").read_text())
    except OSError as exc:
        return [Finding("cgroups", "optional", f"cannot read /proc/self/cgroup ({exc}); memory is enforced by "
                        "the supervisor's measurement alone")]
    findings = [Finding("cgroups", "ok", f"cgroup v{version}")]
    available = _v2_controllers(root, paths.get("", "/")) if version == 2 else set()
    for controller in CONTROLLERS:
        if version == 1:
            folder = root / controller / paths.get(controller, "/").lstrip("/")
            usable = controller in paths and folder.is_dir() and _can_make_child(folder)
        else:
            folder = root / paths.get("", "/").lstrip("/")
            usable = controller in available and _can_make_child(folder)
        findings.append(_controller_finding(controller, usable, folder))
    return findings


def _v2_controllers(root: Path, path: str) -> set[str]:
    folder = root / path.lstrip("/")
    try:
        controllers = set((folder / "cgroup.controllers").read_text().split())
        controllers &= set((folder / "cgroup.subtree_control").read_text().split())
    except OSError:
        return set()
    if (folder / "cgroup.freeze").exists():  # v2 freezes any non-root group through this file
        controllers.add("freezer")
    return controllers


def _can_make_child(folder: Path) -> bool:
    """Whether a per-run group can be made here: make one and remove it again."""
    probe = folder / f"ptb-harness-doctor-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
        return True
    except OSError:
        return False


_WITHOUT = {
    "memory": "the memory budget is then enforced by the supervisor's sampling, not by the kernel",
    "pids": "the process cap is then enforced by the supervisor alone",
    "cpu": "concurrent runs then share cores instead of getting their own quota",
    "freezer": "validation pauses then cannot freeze the run",
}


def _controller_finding(controller: str, usable: bool, folder: Path) -> Finding:
    name = f"cgroup {controller}"
    if usable:
        return Finding(name, "ok", f"per-run groups can be made under {folder}")
    return Finding(name, "optional", f"no per-run group possible under {folder}: {_WITHOUT[controller]}; "
                   "run the harness as root or delegate the cgroup to its user")


def check_data(source: DataSource) -> Finding:
    """The PTB files where a run would read them, each verified against its SHA-256 (no download)."""
    offline = dataclasses.replace(source, mirrors=())
    where = str(source.data_dir) if source.data_dir else f"the cache {source.cache_dir / 'data'}"
    try:
        paths = resolve_files(offline, SPLITS)
    except DataError as exc:
        return Finding("data", "missing", f"{exc} Fix: pass --data-dir (or HARNESS_DATA_DIR) to the folder with "
                       "ptb.train.txt, ptb.valid.txt and ptb.test.txt once; it is then remembered in the cache")
    names = ", ".join(path.name for path in paths.values())
    return Finding("data", "ok", f"{names} in {where}: checksums verified")


def check_database(db: str) -> Finding:
    """Whether the results database opens, at which schema version, and whether it can be written."""
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.exc import SQLAlchemyError

    from harness.store import SCHEMA_VERSION, database_url

    url = database_url(db)
    shown = redact_url(str(db))
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        folder = Path(url[len("sqlite:///"):]).parent
        if _writable_folder(folder):
            return Finding("database", "ok", f"{shown} does not exist yet; the first `harness run` creates it")
        return Finding("database", "missing", f"{shown} does not exist and {folder} cannot be written; "
                       "pass --db to a writable place")
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
            return Finding("database", "missing", f"{shown} or its folder is read-only (SQLite writes beside the "
                           "file); runs cannot be recorded: make both writable or pass another --db")
    try:
        engine = create_engine(url)
    except ImportError as exc:
        return Finding("database", "missing", f"{shown}: its driver is not installed ({exc}); "
                       "for PostgreSQL: pip install -e '.[postgres]'")
    except SQLAlchemyError as exc:
        return Finding("database", "missing", f"{shown} is not a database URL: {_first_line(exc)}")
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("harness_meta"):
                return Finding("database", "ok", f"{shown} opens; it holds no harness tables yet")
            row = connection.execute(text("SELECT value FROM harness_meta WHERE key = 'schema_version'")).first()
    except SQLAlchemyError as exc:
        return Finding("database", "missing", f"{shown} does not open: {_first_line(exc)}")
    finally:
        engine.dispose()
    version = int(row[0]) if row else None
    if version is not None and version > SCHEMA_VERSION:
        return Finding("database", "missing", f"{shown} has schema version {version}, newer than this harness "
                       f"reads ({SCHEMA_VERSION}); upgrade the harness or pass another --db")
    upgrade = "" if version == SCHEMA_VERSION else f" (version {version}; upgraded in place on first use)"
    return Finding("database", "ok", f"{shown} opens, schema version {SCHEMA_VERSION}{upgrade}")


def _writable_folder(folder: Path) -> bool:
    while not folder.exists():  # the store makes missing parent folders
        folder = folder.parent
    return os.access(folder, os.W_OK | os.X_OK)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return redact_url(text.splitlines()[0] if text else type(exc).__name__)


def check_extras() -> list[Finding]:
    findings = []
    for module, (extra, purpose) in OPTIONAL_EXTRAS.items():
        if importlib.util.find_spec(module) is not None:
            findings.append(Finding(f"extra {extra}", "ok", f"{module} is installed: {purpose}"))
        else:
            findings.append(Finding(f"extra {extra}", "optional",
                                    f"{module} is not installed, needed only for {purpose}; "
                                    f"pip install -e '.[{extra}]'"))
    return findings


def check_gpu() -> Finding:
    import torch

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return Finding("gpu", "ok", f"CUDA {torch.version.cuda}: {names} (the cuda division can run here)")
    build = f"torch {torch.__version__} built without CUDA" if torch.version.cuda is None else "no CUDA device visible"
    return Finding("gpu", "optional", f"{build}: only the cpu division runs here; for the cuda division, "
                   "install a CUDA build of torch on a machine with an NVIDIA GPU")
