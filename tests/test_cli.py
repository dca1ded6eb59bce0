"""The command line, started as a real process: help, errors and exit codes, list, new, check."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.store import Store
from tests.conftest import ENTRIES, REPO, run_cli


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh project folder with the template and the unigram baseline."""
    (tmp_path / "submissions").mkdir()
    (tmp_path / "baselines").mkdir()
    shutil.copy(REPO / "submissions" / "_template.py", tmp_path / "submissions" / "_template.py")
    shutil.copy(REPO / "baselines" / "unigram.py", tmp_path / "baselines" / "unigram.py")
    return tmp_path


def test_help_everywhere(project: Path) -> None:
    for args in (["-h"], ["run", "--help"], ["check", "-h"], ["new", "-h"], ["list", "-h"]):
        result = run_cli(*args, cwd=project)
        assert result.code == 0 and "Usage:" in result.stdout
    assert "--hparam KEY=VALUE" in run_cli("run", "-h", cwd=project).stdout


@pytest.mark.parametrize("args,code,message", [
    (["run"], 2, "give entry NAMES or --all"),
    (["run", "unigram", "--all"], 2, "give entry NAMES or --all"),
    (["run", "nope"], 3, "no entry named 'nope'"),
    (["run", "unigram", "--memory", "lots"], 2, "memory budget 'lots' is not a size"),
    (["run", "unigram", "--budget", "-5"], 2, "must be a positive number of seconds"),
    (["run", "unigram", "--device", "tpu"], 2, "Invalid value for '--device'"),
    (["run", "unigram", "--hparam", "nope=1"], 2, "entry 'unigram' has no hyper-parameter 'nope'"),
    (["run", "unigram", "--hparam", "batch_size=big"], 2, "'batch_size' of entry 'unigram' must be int"),
    (["run", "unigram", "--data-dir", "/nonexistent"], 3, "ptb.train.txt not found in the data directory"),
    (["new", "Bad-Name"], 2, "must be lower case"),
    (["check", "missing.py"], 2, "does not exist"),
])
def test_errors_are_clear_with_meaningful_exit_codes(project: Path, args: list[str], code: int,
                                                     message: str) -> None:
    result = run_cli(*args, cwd=project)
    assert result.code == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cuda_asked_for_without_cuda(project: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_cli("run", "unigram", "--device", "cuda", cwd=project)
    assert result.code == 2 and "torch sees no CUDA device" in result.stderr


def test_list_shows_entries_from_source(project: Path) -> None:
    result = run_cli("list", cwd=project)
    assert result.code == 0
    assert "unigram" in result.stdout and "baseline" in result.stdout and "_template" not in result.stdout
    as_json = run_cli("list", "--json", cwd=project)
    assert '"name": "unigram"' in as_json.stdout


def test_new_writes_an_entry_that_passes_check(project: Path) -> None:
    result = run_cli("new", "my_lstm", cwd=project)
    assert result.code == 0, result.stderr
    entry = project / "submissions" / "my_lstm.py"
    assert entry.read_text() == (project / "submissions" / "_template.py").read_text()
    assert run_cli("new", "my_lstm", cwd=project).code == 3  # never overwrites
    checked = run_cli("check", str(entry), cwd=project)
    assert checked.code == 0, checked.stdout + checked.stderr
    assert "on_epoch_end x1" in checked.stdout and "on_validation x1" in checked.stdout  # counted, not claimed
    for name in ("import", "training", "validation pass", "scoring", "causality", "batch-size independence"):
        assert f"ok   {name}" in checked.stdout
    assert "passes every check" in checked.stdout


def test_check_reports_every_problem_of_a_bad_entry(tmp_path: Path) -> None:
    bad = tmp_path / "bidirectional.py"
    bad.write_text(
        "import torch\nfrom harness.contract import Entry\n"
        "class Bi(Entry):\n"
        "    def setup(self, ctx):\n        self.table = torch.zeros(ctx.vocab_size)\n"
        "    def train_step(self, inputs, targets):\n        return 1.0\n"
        "    def log_probs(self, inputs, state):\n"
        "        logits = torch.zeros(*inputs.shape, 10000)\n"
        "        logits[..., 0] = inputs.float().mean()  # sees the whole window\n"
        "        return logits.log_softmax(-1), state\n"
    )
    result = run_cli("check", str(bad), cwd=tmp_path)
    assert result.code == 1
    assert "FAIL causality" in result.stdout and "ok   training" in result.stdout
    assert "1 problem(s) found" in result.stderr


def test_check_with_hparam_override_and_broken_import(tmp_path: Path) -> None:
    ok = run_cli("check", str(ENTRIES / "tiny_lstm.py"), "--hparam", "hidden=8", cwd=tmp_path)
    assert ok.code == 0, ok.stdout + ok.stderr
    broken = tmp_path / "broken.py"
    broken.write_text("def oops(:\n")
    result = run_cli("check", str(broken), cwd=tmp_path)
    assert result.code == 1 and "FAIL import" in result.stdout and "SyntaxError" in result.stdout


def test_run_prints_its_plan_and_dry_run_stops_there(project: Path, env: dict[str, str]) -> None:
    result = run_cli("run", "unigram", "--dry-run", "--budget", "30", cwd=project, env=env)
    assert result.code == 0, result.stderr
    assert "plan: 1 run(s) to start, 0 finished result(s) to reuse, division cpu; estimated wall time" in result.stderr
    assert "run  unigram seed 0: budget 30 s" in result.stderr
    store = Store(project / "harness.sqlite")
    assert store.runs() == []
