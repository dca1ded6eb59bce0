"""The competition config: defaults, file, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import Competition, load_competition, parse_competition
from harness.errors import ConfigError
from tests.conftest import REPO


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    competition = load_competition(None)
    assert competition == Competition()
    assert competition.division_for("cpu").budget == 600 and competition.division_for("cuda").budget == 300
    assert competition.division_for("cpu").memory_bytes == 8 * 2**30


def test_the_repository_config_parses() -> None:
    competition = load_competition(REPO / "competition.toml")
    assert competition.phase == "open" and competition.seeds == 1
    assert competition.divisions["cuda"].memory == "40GiB"


def test_file_values_replace_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[competition]\nphase = "final"\nseeds = 3\n[divisions.small]\ndevice = "cpu"\n'
                    'budget = 30\nmemory = "2GiB"\n')
    competition = load_competition(path)
    assert competition.phase == "final" and competition.seeds == 3
    assert list(competition.divisions) == ["small"]
    assert competition.division_for("cpu").budget == 30.0
    with pytest.raises(ConfigError, match="no division for device 'cuda'"):
        competition.division_for("cuda")


@pytest.mark.parametrize("raw,message", [
    ({"competition": {"seed": 1}}, "unknown key 'seed'"),
    ({"competition": {"seeds": "three"}}, "'seeds' must be int, got 'three'"),
    ({"competition": {"seeds": True}}, "'seeds' must be int"),
    ({"competition": {"phase": "closed"}}, "phase must be one of open, final"),
    ({"competition": {"seeds": 0}}, "seeds must be at least 1"),
    ({"leaderboard": {}}, "unknown section"),
    ({"divisions": {"cpu": {"device": "cpu", "budget": 10}}}, r"\[divisions.cpu\]: missing key\(s\) memory"),
    ({"divisions": {"cpu": {"device": "cpu", "budget": 10, "memory": "lots"}}}, "'lots' is not a size"),
    ({"divisions": {"cpu": {"device": "tpu", "budget": 10, "memory": "1GiB"}}}, "device must be cpu or cuda"),
    ({"divisions": {"cpu": {"device": "cpu", "budget": 10, "memory": "1GiB", "gpus": 2}}}, "unknown key 'gpus'"),
    ({"entries": {"my_lstm": {"lr": 0.002}}}, r"\[entries.my_lstm\]: the only key is the table hparams"),
    ({"entries": {"my_lstm": {"hparams": {"sizes": [1, 2]}}}}, "'sizes' must be a number, string or boolean"),
    ({"entries": []}, r"\[entries\] must be a table"),
])
def test_errors_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_competition(raw, "test.toml")


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[competition\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_competition(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_competition(tmp_path / "none.toml")


def test_pinned_hyper_parameters_are_an_entrys_official_overrides(tmp_path: Path) -> None:
    config = tmp_path / "competition.toml"
    config.write_text('[entries.my_lstm.hparams]\nlr = 0.002\ntied = true\nname = "small"\n')
    competition = load_competition(config)
    assert competition.official_hparams("my_lstm") == {"lr": 0.002, "tied": True, "name": "small"}
    assert competition.official_hparams("other") == {}
    # spelt as --hparam would spell them, so they are typed and checked against the entry's schema
    assert competition.pinned_pairs("my_lstm") == ["lr=0.002", "tied=true", "name=small"]
    assert competition.as_dict()["pinned_hparams"] == {"my_lstm": {"lr": 0.002, "tied": True, "name": "small"}}


def test_a_pin_the_entry_does_not_have_is_refused_before_anything_runs(tmp_path: Path) -> None:
    from tests.conftest import make_project, run_cli

    project = make_project(tmp_path)
    (project / "competition.toml").write_text("[entries.unigram.hparams]\nnope = 1\n")
    result = run_cli("run", "unigram", cwd=project)
    assert result.code == 2 and "entry 'unigram' has no hyper-parameter 'nope'" in result.stderr
