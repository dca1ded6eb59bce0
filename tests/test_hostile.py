"""The hostile corpus: one `harness run --all` over 30 broken or malicious entries and two good
ones, in the bwrap sandbox. Every hostile entry must end as expected with a reason a participant
understands; the good ones must score exactly what they score alone; nothing outside the runs'
directories may change; the database must stay intact."""

from __future__ import annotations

import hashlib
import shutil
import socket
import sqlite3
import threading
from pathlib import Path

import pytest

from harness.sandbox import bwrap_problem
from harness.store import Store
from tests.conftest import ENTRIES, REPO, run_cli

pytestmark = pytest.mark.slow
HOSTILE = Path(__file__).resolve().parent / "hostile"

# entry: (status, failure kind, words the reason must contain)
EXPECTED = {
    "syntax_error": ("failed", "import_error", "SyntaxError"),
    "import_raises": ("failed", "import_error", "import-time failure on purpose"),
    "missing_method": ("failed", "contract_violation", "log_probs is not defined"),
    "wrong_signature": ("failed", "contract_violation", "train_step must take 2 argument"),
    "setup_raises": ("failed", "runtime_error", "setup raised ValueError: setup cannot find its config"),
    "step_raises": ("failed", "runtime_error", "train_step (step 1) raised IndexError"),
    "nan_loss": ("failed", "non_finite", "non-finite loss"),
    "wrong_shape": ("invalid", "invalid_output", "shape"),
    "wrong_dtype": ("invalid", "invalid_output", "dtype torch.int64"),
    "wrong_device": ("invalid", "invalid_output", "on meta"),
    "unnormalised": ("invalid", "invalid_output", "not normalised"),
    "infinities": ("invalid", "invalid_output", "non-finite value (-inf)"),
    "bidirectional": ("invalid", "causality_violation", "causality check failed"),
    "peek_via_state": ("invalid", "causality_violation", "causality check failed"),
    "weights_change": ("invalid", "weights_modified", "weights changed while it was being scored"),
    "sleep_forever": ("timeout", "timeout", "past the 4 s budget"),
    "ignores_budget": ("timeout", "timeout", "past the 4 s budget"),
    "patch_clock": ("timeout", "timeout", "past the 4 s budget"),
    "ignore_sigterm": ("timeout", "timeout", "past the 4 s budget"),
    "memory_double": ("out_of_memory", "out_of_memory", "memory"),
    "grandchild_memory": ("out_of_memory", "out_of_memory", "memory"),
    "huge_hparam": ("out_of_memory", "out_of_memory", "can't allocate memory"),
    "fork_bomb": ("failed", "sandbox_violation", "started more than 64 processes"),
    "print_flood": ("failed", "sandbox_violation", "printed more than 16.0 MiB"),
    "read_test_split": ("failed", "runtime_error", "could not read ptb.test.txt"),
    "network_socket": ("failed", "runtime_error", "setup raised"),
    "write_database": ("failed", "runtime_error", "setup raised"),
    "delete_repo_files": ("failed", "runtime_error", "setup raised"),
    "kill_parent": ("ok", None, ""),  # its SIGKILL reaches only the sandbox's own init: harmless
    "html_name": ("ok", None, ""),
}
GOOD = ("good_counts", "good_bigram")


def materialise(path: Path) -> str:
    """The entry as the one self-contained module a participant submits: the shared well-behaved
    base (tests/hostile/_base.py) pasted in where the file imports it."""
    base = (HOSTILE / "_base.py").read_text().split('"""', 2)[2]
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("from tests.hostile._base import") or line.startswith("from tests.hostile import"):
            lines.append(base)
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file outside the harness's own outputs (runs, database, site)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and relative.parts[0] not in (".harness", "site") and ".sqlite" not in path.name:
            found[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def test_hostile_corpus_in_one_run_all(tmp_path: Path, env: dict[str, str]) -> None:
    problem = bwrap_problem()
    if problem:
        pytest.fail(f"the sandbox is needed for this test: {problem}")
    project = tmp_path / "project"
    (project / "submissions").mkdir(parents=True)
    (project / "baselines").mkdir()
    for path in HOSTILE.glob("[a-z]*.py"):
        (project / "submissions" / path.name).write_text(materialise(path))
    unigram = (REPO / "baselines" / "unigram.py").read_text()  # a participant's copy: own name, own authors
    (project / "submissions" / "good_counts.py").write_text(
        unigram.replace('name = "unigram"', 'name = "good_counts"').replace('"ptb-harness baselines"', '"a participant"'))
    shutil.copy(ENTRIES / "good_bigram.py", project / "submissions" / "good_bigram.py")
    assert len(list((project / "submissions").glob("*.py"))) == len(EXPECTED) + len(GOOD)

    alone = run_cli("run", *GOOD, "--db", str(tmp_path / "alone.sqlite"), "--sandbox", "bwrap", cwd=project, env=env)
    assert alone.code == 0, alone.stderr
    alone_scores = {r.entry: (r.valid_ppl, r.test_ppl) for r in Store(tmp_path / "alone.sqlite").runs()}

    received: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 47391))
    listener.settimeout(0.5)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            received.append(connection.recv(100))
            connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    before = snapshot(project)
    try:
        result = run_cli("run", "--all", "--budget", "4", "--memory", "2GiB", "--evals", "1", "--sandbox", "bwrap",
                         cwd=project, env=env, timeout=1200)
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert result.code == 1, result.stderr  # some runs failed; the harness itself finished
    assert "site rebuilt" in result.stderr

    runs = {r.entry: r for r in Store(project / "harness.sqlite").runs()}
    assert set(runs) == set(EXPECTED) | set(GOOD)
    wrong = []
    for entry, (status, kind, words) in EXPECTED.items():
        run = runs[entry]
        if run.status != status or run.failure != kind or words not in (run.reason or ""):
            wrong.append(f"{entry}: got {run.status} [{run.failure}] {run.reason!r}")
    assert not wrong, "\n".join(wrong)
    for entry in GOOD:
        assert runs[entry].status == "ok"
        assert (runs[entry].valid_ppl, runs[entry].test_ppl) == alone_scores[entry]
    assert all(r.isolation["sandbox"] == "bwrap" for r in runs.values())
    assert received == []  # no connection left the sandbox
    assert snapshot(project) == before  # no file outside the runs' directories changed
    with sqlite3.connect(project / "harness.sqlite") as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    index = (project / "site" / "index.html").read_text()
    assert "<script>alert(1)</script>" not in index and "&lt;script&gt;alert(1)&lt;/script&gt;" in index
