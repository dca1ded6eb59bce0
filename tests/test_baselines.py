"""Every baseline follows the participants' contract, passes `harness check`, runs, and the
count-based ones reproduce the published PTB perplexities (slow ones on the real data)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.store import Store
from tests.conftest import REPO, run_cli

BASELINES = sorted(p.stem for p in (REPO / "baselines").glob("[a-z]*.py"))
NEURAL = [name for name in BASELINES if name not in ("unigram", "kn5")]


def test_the_expected_baselines_exist() -> None:
    assert set(BASELINES) >= {"unigram", "kn5", "lstm_small", "transformer", "lstm_sprint", "bert_mlm"}


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_passes_check(name: str, tmp_path: Path) -> None:
    result = run_cli("check", str(REPO / "baselines" / f"{name}.py"), cwd=tmp_path)
    assert result.code == 0, result.stdout + result.stderr
    assert "passes every check" in result.stdout


@pytest.fixture
def project(tmp_path: Path, env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    (tmp_path / "submissions").mkdir()
    shutil.copytree(REPO / "baselines", tmp_path / "baselines")
    return tmp_path, env


@pytest.mark.slow
def test_unigram_and_kn5_reproduce_the_published_perplexities(project: tuple[Path, dict[str, str]]) -> None:
    folder, env = project
    result = run_cli("run", "unigram", "kn5", "--evals", "0", cwd=folder, env=env)
    assert result.code == 0, result.stderr
    runs = {r.entry: r for r in Store(folder / "harness.sqlite").runs()}
    assert runs["unigram"].test_ppl == pytest.approx(639.3, abs=0.05)
    assert runs["kn5"].test_ppl == pytest.approx(141.2, abs=0.2)
    assert runs["kn5"].valid_ppl == pytest.approx(148.0, abs=0.2)
    assert runs["kn5"].test_tokens == 82_430 and runs["kn5"].valid_tokens == 73_760
    assert runs["kn5"].checks["causality"] == "passed"


@pytest.mark.slow
def test_neural_baselines_smoke_run(project: tuple[Path, dict[str, str]]) -> None:
    folder, env = project
    # A few steps each (a step limit, so nothing depends on the machine's speed), then full scoring.
    result = run_cli("run", *NEURAL, "--budget", "300", "--evals", "0", "--hparam", "max_steps=3", cwd=folder, env=env)
    assert result.code == 0, result.stderr
    runs = {r.entry: r for r in Store(folder / "harness.sqlite").runs()}
    assert set(runs) == set(NEURAL)
    for run in runs.values():
        assert run.status == "ok" and run.steps == 3 and run.stop_reason == "max_steps"
    bert = runs["bert_mlm"]
    assert bert.track == "mlm" and bert.checks["causality"] == "not applicable"
    assert 0 < bert.test_accuracy < 1 and bert.test_tokens == round(0.15 * 82_430)
    assert runs["transformer"].checks["causality"] == "passed"
