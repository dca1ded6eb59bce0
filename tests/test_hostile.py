"""The hostile corpus: one `harness run --all` over every entry of tests/hostile/ (broken or
malicious, written as a participant would) beside a baseline and a good submission, in the bwrap
sandbox. Every hostile entry must end as expected with a reason a participant understands; the
good ones must score exactly what they score alone; no attack may gain a score; nothing outside
the runs' directories may change; the database must stay intact. A second test runs an entry
whose import leaves marker files through `harness check`, `run` and `list`."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import site
import socket
import sqlite3
import sys
import tempfile
import threading
from pathlib import Path

import pytest

import harness
from harness.sandbox import bwrap_problem
from harness.site import entry_filename
from harness.store import Store
from tests.conftest import ENTRIES, REPO, run_cli

pytestmark = pytest.mark.slow
HOSTILE = Path(__file__).resolve().parent / "hostile"
VOCAB = 10_000

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
    "weights_change": ("ok", None, ""),  # it bumps a tensor its log_probs never reads: rows unchanged, nothing gained
    "sleep_forever": ("timeout", "timeout", "past the 4 s budget"),
    "ignores_budget": ("timeout", "timeout", "past the 4 s budget"),
    "patch_clock": ("ok", None, ""),  # its frozen clock is not the harness's: no batch after the budget
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
    # Its SIGKILL reaches only its own sandbox's init, which takes the trainer with it: its own run ends.
    "kill_parent": ("failed", "runtime_error", "before it reported a result"),
    "html_name": ("ok", None, ""),
    # The channel: forged, out-of-order or malformed messages end the run; nothing is believed.
    "forged_phase": ("failed", "sandbox_violation", "unknown message type 'phase'"),
    "forged_need_test": ("failed", "sandbox_violation", "unknown message type 'need_test'"),
    "forged_ready": ("failed", "sandbox_violation", "'checkpoint_ready' message out of order"),
    "forged_rows": ("failed", "sandbox_violation", "answered request 1 when request 0 was due"),
    "forged_result": ("failed", "sandbox_violation", "unknown message type 'result'"),
    # A forged request gets a reply the trainer then reads for its own: batches it never trains on are
    # counted against it, or the exchange falls out of order and the run ends. Never more than that.
    "forged_bare_next": (("ok", "failed"), (None, "sandbox_violation"), ""),
    "forged_failure_kind": ("failed", "contract_violation", "which a run cannot claim"),
    "channel_reset": ("failed", ("sandbox_violation", "runtime_error"), "trainer"),
    "exit_zero": ("failed", "contract_violation", "exit code 0"),
    # Reading what it must not have, faking checks from inside, lying about its output.
    "gc_snoop": ("ok", None, ""),  # finds nothing: it stays uniform (its score is asserted below)
    "monkeypatch_checks": ("invalid", "invalid_output", "not normalised"),
    "lying_tensor": ("invalid", "invalid_output", "not normalised"),
    "tolerance_bonus": ("ok", None, ""),  # ok, but no better than without the bonus (asserted below)
    # Weights that move while scored; peeking that hides from the audits.
    "background_training": ("invalid", "weights_modified", "weights changed while it was being scored"),
    "shadow_swap": ("invalid", "weights_modified", "weights changed while it was being scored"),
    "memorising_peeker": ("invalid", ("causality_violation", "weights_modified"), ""),
    # From the adversarial review: peeks only from the 5th window of a segment on (audits reach any window).
    "late_peeker": ("invalid", ("causality_violation", "weights_modified"), ""),
    # Remembers valid in the scorers across passes and recites it at the end: final scorers are fresh,
    # so it ends ok, scored as the unigram it is (asserted below).
    "valid_memory": ("ok", None, ""),
    "shape_peeker": ("invalid", "causality_violation", "causality check failed"),
    "partial_peeker": ("invalid", "causality_violation", "causality check failed"),
    "context_diluter": ("invalid", "causality_violation", "causality check failed"),
    # Finds only other streams' windows on its channel: it scores as the uniform model it otherwise is.
    "read_ahead": ("ok", None, ""),
    # Looks for a marker in its scorer's shared block that an earlier scorer left: it finds none.
    "shm_carry": ("ok", None, ""),
    # The contract and the sandbox.
    "huge_eval_context": ("failed", ("contract_violation", "sandbox_violation"), "eval_context"),
    "unserialisable_state": ("failed", "contract_violation", "state_dict holds a"),
    "checkpoint_symlink": ("failed", "contract_violation", "reading the checkpoint"),
    "checkpoint_relink": ("ok", None, ""),  # its own scorer follows its link; the supervisor must not
    "disk_fill": ("failed", "sandbox_violation", "disk quota"),
    "plant_files": ("ok", None, ""),  # every write refused: it goes on as a uniform model
    "read_secrets": ("ok", None, ""),  # nothing readable: it goes on as a uniform model
    "marker_import": ("ok", None, ""),
    "tamper_describe": ("ok", None, ""),  # without --hparam there is no describer to tamper with
    # Names: a submission taking a baseline's name or author line fails alone, under its file's key.
    "submissions/reserved_name": ("failed", "contract_violation", "the name 'unigram' is taken by baseline"),
    "submissions/reserved_authors": ("failed", "contract_violation", "reserved for the harness's baselines"),
}
GOOD = ("unigram", "good_bigram")  # a baseline (it owns its name) and a good submission
SAME_SCORE_ALONE = ("good_bigram",)
"""Good entries whose score does not depend on timing (one full epoch well inside the budget):
they must score exactly what they score alone under the same options. unigram's 4 s budget
ends mid-epoch, at a point that depends on the machine's load, so it is only required to be ok."""
RUN_OPTIONS = ("--budget", "4", "--memory", "2GiB", "--evals", "1", "--sandbox", "bwrap", "--threads", "1")
SIDE_BY_SIDE = ("--jobs", "2")
"""The corpus runs two at a time, each on its own CPU: a hostile neighbour must not change a run."""
UNIFORM = ("gc_snoop", "plant_files", "read_secrets", "marker_import", "tamper_describe", "patch_clock", "weights_change",
           "read_ahead")
"""Entries that end `ok` as the uniform model: they score exactly the vocabulary size."""
GOOD_BIGRAM = ENTRIES / "good_bigram.py"
PLANTED = "ptb_hostile_planted"
MARKER = "ptb-hostile-marker"
SHADOW_LINE = re.compile(r"root:[^:\s]*:\d*:\d*:")


def materialise(path: Path) -> str:
    """The entry as the one self-contained module a participant submits: each shared helper it imports
    from tests/hostile/ (the well-behaved base `_base.py`, the channel finder `_channel.py`) pasted in
    where it is imported, once."""
    pasted: set[str] = set()
    lines = []
    for line in path.read_text().splitlines():
        match = re.match(r"from tests\.hostile(?:\.(_\w+))? import (\w+)", line)
        if not match:
            lines.append(line)
            continue
        helper = match.group(1) or match.group(2)
        if helper not in pasted:
            pasted.add(helper)
            lines.append((HOSTILE / f"{helper}.py").read_text().split('"""', 2)[2])
    return "\n".join(lines) + "\n"


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file outside the harness's own outputs (runs, database, site)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and relative.parts[0] not in (".harness", "site") and ".sqlite" not in path.name:
            found[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def outside_places() -> list[Path]:
    """Where a planted file or a marker would matter, outside every sandbox: the environment's
    packages, the harness, the repository, the shared temporary folders and the home directory."""
    places = {Path(p) for p in site.getsitepackages()} | {Path(p) for p in sys.path if p.endswith("site-packages")}
    places |= {Path(harness.__file__).parent, REPO, Path(tempfile.gettempdir()), Path("/tmp"), Path("/dev/shm"),
               Path.home()}
    return sorted(p for p in places if p.is_dir())


def leftovers(*folders: Path) -> list[str]:
    """Planted modules or markers directly in the outside places, or anywhere under `folders`."""
    found = [str(place / name) for place in outside_places()
             for name in (MARKER, f"{PLANTED}.pth", f"{PLANTED}.py") if (place / name).exists()]
    for folder in folders:
        found += [str(path) for path in folder.rglob("*") if path.name in (MARKER, f"{PLANTED}.pth", f"{PLANTED}.py")]
    return found


def expected_kinds(kind: str | tuple[str, ...] | None) -> tuple[str | None, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


@pytest.mark.timeout(3600)  # some 60 runs, two sandboxed processes each, on a shared machine
def test_hostile_corpus_in_one_run_all(tmp_path: Path, env: dict[str, str]) -> None:
    problem = bwrap_problem()
    if problem:
        pytest.fail(f"the sandbox is needed for this test: {problem}")
    assert not leftovers(), "planted files or markers from an earlier run: remove them first"
    project = tmp_path / "project"
    (project / "submissions").mkdir(parents=True)
    (project / "baselines").mkdir()
    for path in HOSTILE.glob("[a-z]*.py"):
        (project / "submissions" / path.name).write_text(materialise(path))
    shutil.copy(REPO / "baselines" / "unigram.py", project / "baselines" / "unigram.py")
    shutil.copy(GOOD_BIGRAM, project / "submissions" / "good_bigram.py")
    assert len(list((project / "submissions").glob("*.py"))) == len(EXPECTED) + len(GOOD) - 1

    alone = run_cli("run", *SAME_SCORE_ALONE, "--db", str(tmp_path / "alone.sqlite"), *RUN_OPTIONS, "--no-site",
                    cwd=project, env=env)
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
        result = run_cli("run", "--all", *RUN_OPTIONS, *SIDE_BY_SIDE, cwd=project, env=env, timeout=3000)
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
        if run.status not in expected_kinds(status) or run.failure not in expected_kinds(kind) \
                or words not in (run.reason or ""):
            wrong.append(f"{entry}: got {run.status} [{run.failure}] {run.reason!r}")
    assert not wrong, "\n".join(wrong)
    for entry in GOOD:
        assert runs[entry].status == "ok", (entry, runs[entry].reason)
    for entry in SAME_SCORE_ALONE:
        assert (runs[entry].valid_ppl, runs[entry].test_ppl) == alone_scores[entry]
    timed = sorted((r for r in runs.values() if r.started_at and r.ended_at), key=lambda r: r.started_at)
    overlapping = [(a, b) for a, b in zip(timed, timed[1:]) if b.started_at < a.ended_at]
    assert overlapping or len(os.sched_getaffinity(0)) < 2, "the corpus should have run side by side"
    for a, b in overlapping:  # runs out at the same time never held the same CPU
        if a.isolation.get("cpus") and b.isolation.get("cpus"):
            assert a.isolation["cpus"] != b.isolation["cpus"], (a.entry, b.entry, a.isolation["cpus"])
    assert all(r.isolation["sandbox"] == "bwrap" for r in runs.values() if not r.entry.startswith("submissions/"))
    assert received == []  # no connection left the sandbox
    assert snapshot(project) == before  # no file outside the runs' directories changed
    assert leftovers(project) == []  # nothing planted in site-packages, the harness or the repository
    with sqlite3.connect(project / "harness.sqlite") as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    index = (project / "site" / "index.html").read_text()
    # The corpus runs with a short budget (exploration, not the official configuration): the name shows
    # on the entry's own page, escaped, and never as markup anywhere.
    page = (project / "site" / "entries" / entry_filename("html_name")).read_text()
    assert "<script>alert(1)</script>" not in index and "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page

    # Attacks that end `ok` must have gained nothing: a uniform model scores the vocabulary size.
    for entry in UNIFORM:
        assert math.isclose(runs[entry].valid_ppl, VOCAB, rel_tol=1e-4), (entry, runs[entry].valid_ppl)
        assert math.isclose(runs[entry].test_ppl, VOCAB, rel_tol=1e-4), (entry, runs[entry].test_ppl)
    # It recited valid at 1.11 when the pass scorers lived on: the attack is active (its pass scorers
    # remembered valid), and the final scorers, fresh, had nothing to recite.
    assert "valid_memory: remembered" in runs["valid_memory"].log_tail, runs["valid_memory"].log_tail[-800:]
    assert "valid_memory: reciting from 0 contexts" in runs["valid_memory"].log_tail
    assert runs["valid_memory"].valid_ppl > 100
    # Pass scorers (each started on fresh blocks) wrote the marker; the final scorers never see it.
    assert runs["shm_carry"].log_tail.count("marker absent") >= 4, runs["shm_carry"].log_tail[-800:]
    assert "marker inherited" not in runs["shm_carry"].log_tail
    honest, bonus = runs["gc_snoop"], runs["tolerance_bonus"]  # the same uniform model, without and with +0.00099
    assert bonus.valid_ppl >= honest.valid_ppl * (1 - 1e-6) and bonus.test_ppl >= honest.test_ppl * (1 - 1e-6)
    assert "nothing split-sized in the trainer" in honest.log_tail and "nothing split-sized in the scorer" in honest.log_tail
    assert "read_secrets: nothing readable" in runs["read_secrets"].log_tail
    assert runs["checkpoint_relink"].param_count is None  # the final checkpoint is a link: never followed
    for run in runs.values():  # no line of /etc/shadow reached a log, a reason or a traceback
        assert not SHADOW_LINE.search((run.log_tail or "") + (run.reason or "") + (run.traceback or "")), run.entry
    for entry in ("unigram", "good_bigram", "tolerance_bonus"):
        audits = runs[entry].checks
        assert audits["causality_audits"] > 0 and audits["replay_probes"] > 0, audits


def test_import_markers_stay_in_the_sandbox(tmp_path: Path, env: dict[str, str]) -> None:
    """An entry whose import writes marker files everywhere it can, through `harness check`,
    `harness run` and `harness list` as real processes: its import runs (the run's log shows it),
    and no marker exists outside the sandbox afterwards, as root on the host included."""
    problem = bwrap_problem()
    if problem:
        pytest.fail(f"the sandbox is needed for this test: {problem}")
    assert not leftovers(), "markers from an earlier run: remove them first"
    project = tmp_path / "project"
    (project / "submissions").mkdir(parents=True)
    (project / "baselines").mkdir()
    entry = project / "submissions" / "marker_import.py"
    entry.write_text(materialise(HOSTILE / "marker_import.py"))

    checked = run_cli("check", str(entry), "--sandbox", "bwrap", cwd=project, env=env, timeout=600)
    assert checked.code == 0, checked.stdout + checked.stderr
    assert leftovers(project) == []
    ran = run_cli("run", "marker_import", "--budget", "4", "--evals", "1", "--sandbox", "bwrap", "--no-site",
                  cwd=project, env=env, timeout=600)
    assert ran.code == 0, ran.stderr
    (run,) = Store(project / "harness.sqlite").runs()
    assert f"{MARKER}: written in" in run.log_tail  # the import did run, inside the sandbox
    assert leftovers(project) == []
    listed = run_cli("list", cwd=project, env=env)
    assert listed.code == 0 and "marker_import" in listed.stdout
    assert leftovers(project) == []


def test_a_submission_named_like_a_baseline_fails_alone(tmp_path: Path, env: dict[str, str]) -> None:
    """`name = "kn5"` beside the kn5 baseline: the impostor fails with a reason, `list` and the
    baseline are unaffected, and the good submission run with it in one command scores."""
    project = tmp_path / "project"
    (project / "submissions").mkdir(parents=True)
    (project / "baselines").mkdir()
    shutil.copy(REPO / "baselines" / "kn5.py", project / "baselines" / "kn5.py")
    impostor = materialise(HOSTILE / "reserved_name.py").replace('name = "unigram"', 'name = "kn5"')
    assert 'name = "kn5"' in impostor
    (project / "submissions" / "impostor.py").write_text(impostor)
    shutil.copy(GOOD_BIGRAM, project / "submissions" / "good_bigram.py")

    ran = run_cli("run", "submissions/impostor", "good_bigram", "--budget", "4", "--evals", "1", "--sandbox", "bwrap",
                  "--no-site", cwd=project, env=env, timeout=600)
    assert ran.code == 1, ran.stderr  # the impostor failed; the harness went on
    runs = {r.entry: r for r in Store(project / "harness.sqlite").runs()}
    assert set(runs) == {"submissions/impostor", "good_bigram"}
    assert runs["submissions/impostor"].status == "failed"
    assert runs["submissions/impostor"].failure == "contract_violation"
    assert "the name 'kn5' is taken by baseline kn5.py" in runs["submissions/impostor"].reason
    assert runs["good_bigram"].status == "ok"

    listed = run_cli("list", "--json", cwd=project, env=env)
    assert listed.code == 0, listed.stderr
    shown = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [e["kind"] for e in shown if e["path"].endswith("kn5.py")] == ["baseline"]
    (listed_impostor,) = [e for e in shown if e["path"].endswith("impostor.py")]
    assert "taken by baseline kn5.py" in (listed_impostor.get("problem") or ""), listed_impostor  # list says why it will fail


def test_one_entry_cannot_describe_another(tmp_path: Path) -> None:
    """Typing `--hparam` imports the entries in a sandboxed describer; an entry imported there must
    not decide what the others' schemas are: good_bigram keeps the organiser's override."""
    from harness.checking import describe_entries
    from harness.cli import _confinement, _typed_overrides
    from harness.entries import EntrySource

    problem = bwrap_problem()
    if problem:
        pytest.fail(f"the sandbox is needed for this test: {problem}")
    (tmp_path / "good_bigram.py").write_text((ENTRIES / "good_bigram.py").read_text())
    (tmp_path / "tamper_describe.py").write_text(materialise(HOSTILE / "tamper_describe.py"))
    entries = [EntrySource.read(tmp_path / name, "submission") for name in ("good_bigram.py", "tamper_describe.py")]
    confinement = _confinement("bwrap")
    described = describe_entries(entries, confinement)
    assert described["good_bigram"]["ok"], described["good_bigram"]
    pairs = {entry.name: ["max_steps=3"] for entry in entries}
    typed, kept = _typed_overrides(entries, pairs, confinement)
    assert typed["good_bigram"] == {"max_steps": 3}
    # Its forged description of itself (a schema without max_steps) fails it alone, not the command.
    (tampered,) = [entry for entry in kept if entry.name == "tamper_describe"]
    assert "no hyper-parameter 'max_steps'" in (tampered.problem or ""), tampered.problem
