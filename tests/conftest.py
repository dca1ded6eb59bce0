"""Shared fixtures: the real PTB folder, tiny corpora made on the spot, and a CLI runner that
starts `harness` as a real subprocess."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.data import FileSpec

REPO = Path(__file__).resolve().parent.parent
ENTRIES = Path(__file__).resolve().parent / "entries"


def ptb_dir() -> Path:
    """HARNESS_DATA_DIR (a relative one from where pytest was started, as the README's command gives
    it), else ../shared/data/ptb beside the checkout (where CI puts it); absolute, since the tests
    start `harness` in other folders."""
    return Path(os.environ.get("HARNESS_DATA_DIR") or REPO.parent / "shared" / "data" / "ptb").resolve()


@pytest.fixture(scope="session")
def ptb() -> Path:
    folder = ptb_dir()
    if not (folder / "ptb.train.txt").is_file():
        pytest.fail(f"PTB data not found at {folder}: set HARNESS_DATA_DIR to the folder with ptb.*.txt")
    return folder


@pytest.fixture(scope="session", autouse=True)
def cpu_locks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test session's own CPU-lease folder (harness.cpus), for every harness it starts: its runs
    share the CPUs among themselves as runners on one machine do, and never wait on a competition
    running beside the tests on a developer's machine."""
    folder = tmp_path_factory.mktemp("cpu-locks")
    os.environ["HARNESS_LOCK_DIR"] = str(folder)
    return folder


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty user cache unless it asks for the shared one."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the slow end-to-end tests, so the PTB tokens are cached once."""
    return tmp_path_factory.mktemp("shared-cache")


@pytest.fixture
def env(ptb: Path, shared_cache: Path) -> dict[str, str]:
    """Environment for a `harness` process on the real data, with the shared token cache."""
    return {"HARNESS_DATA_DIR": str(ptb), "HARNESS_CACHE": str(shared_cache)}


def make_project(folder: Path, **entries: Path) -> Path:
    """A project folder as a user has it: submissions/ with the given entries (name -> file), and
    baselines/ with the unigram baseline."""
    for sub in ("submissions", "baselines"):
        (folder / sub).mkdir(exist_ok=True)
    shutil.copy(REPO / "baselines" / "unigram.py", folder / "baselines" / "unigram.py")
    for name, source in entries.items():
        (folder / "submissions" / f"{name}.py").write_text(as_submission(Path(source), name))
    return folder


def as_submission(source: Path, name: str) -> str:
    """A file as a participant would submit it: a baseline copied into submissions/ takes its own
    name and authors (the baselines' names and author line are reserved)."""
    text = source.read_text()
    if source.resolve().parent == (REPO / "baselines").resolve():
        text = re.sub(r'(\n    name = )"[^"]*"', rf'\1"{name}"', text)
        text = re.sub(r'(\n    authors = )"[^"]*"', r'\1"a participant"', text)
    return text


@dataclass
class TinyCorpus:
    folder: Path
    files: dict[str, FileSpec]
    lines: dict[str, list[str]]


def write_corpus(folder: Path, lines: dict[str, list[str]]) -> TinyCorpus:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, text_lines in lines.items():
        name = f"tiny.{split}.txt"
        data = "".join(f" {line} \n" for line in text_lines).encode()
        (folder / name).write_bytes(data)
        files[split] = FileSpec(name, hashlib.sha256(data).hexdigest())
    return TinyCorpus(folder, files, lines)


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> TinyCorpus:
    return write_corpus(tmp_path / "tiny", {
        "train": ["the cat sat", "the dog sat on the mat", "a cat ran", "the mat"],
        "valid": ["the cat ran", "a dog sat"],
        "test": ["the dog ran on a mat", "a cat"],
    })


def default_sigint() -> None:
    """For a harness a test interrupts: Ctrl-C as in a terminal. A test session started in the
    background (nohup, `&` in a script) ignores SIGINT, and a Python started with it ignored never
    raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> CliResult:
    """`python -m harness.cli ARGS` in a real process, as a user would run `harness ARGS`."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    return CliResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server for the whole test session (tests/pg_server.py), always torn down.
    If it cannot start, the tests that need it fail with the reason: CI must provide PostgreSQL."""
    from tests.pg_server import PgServer, PgServerError

    server = PgServer()
    try:
        server.start()
    except PgServerError as exc:
        pytest.fail(f"cannot start a PostgreSQL server for the tests: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_url(pg_server) -> str:
    """URL (postgresql+psycopg://, with a password) of a database on the session's server."""
    return pg_server.new_database("session")


LONGEST_FIRST = ("test_hostile.py", "test_baselines.py", "test_ray.py", "test_resume.py", "test_end_to_end.py")
"""Modules with the longest tests (minutes each on 2 cores): with xdist workers (`-n 2 --dist
loadgroup`) they start first, so that none of them begins last and runs alone at the end."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not getattr(config.option, "numprocesses", None):  # one process: the files' own order
        return

    def order(item: pytest.Item) -> tuple[int, int]:
        module = item.path.name
        first = LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)
        return (first, item.get_closest_marker("slow") is None)

    items.sort(key=order)  # stable: the order within a module is kept
