"""Entry discovery, the contract checks that need no run, and hyper-parameter parsing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.contract import Entry, Hparams
from harness.entries import EntrySource, discover, parse_overrides, select, static_metadata
from harness.errors import EntryError, HparamError
from harness.sandboxed.common import Failure
from harness.sandboxed.loader import build_hparams, check_entry_class, hparam_schema, import_entry_class
from tests.conftest import REPO


@dataclass
class MyHparams(Hparams):
    lr: float = 0.1
    layers: int = 2
    tied: bool = False
    cell: str = "lstm"
    warmup: int | None = None
    when: tuple[int, ...] = (20, 30)


SCHEMA = hparam_schema(MyHparams)


def test_schema_lists_base_and_entry_fields_with_types() -> None:
    assert SCHEMA["batch_size"] == {"type": "int", "list": False, "optional": False, "default": 20}
    assert SCHEMA["max_epochs"]["optional"] is True
    assert SCHEMA["lr"]["type"] == "float" and SCHEMA["tied"]["type"] == "bool"
    assert SCHEMA["warmup"] == {"type": "int", "list": False, "optional": True, "default": None}
    assert SCHEMA["when"] == {"type": "int", "list": True, "optional": False, "default": [20, 30]}


def test_overrides_are_typed() -> None:
    values = parse_overrides(["lr=0.002", "layers=3", "tied=yes", "cell=gru", "warmup=none", "max_steps=10",
                              "when=[5,7]"], SCHEMA, "e")
    assert values == {"lr": 0.002, "layers": 3, "tied": True, "cell": "gru", "warmup": None, "max_steps": 10,
                      "when": [5, 7]}
    hp = build_hparams(MyHparams, values)
    assert hp.lr == 0.002 and hp.batch_size == 20 and hp.when == (5, 7)
    assert parse_overrides(["when=1,2,3"], SCHEMA, "e") == {"when": [1, 2, 3]}


@pytest.mark.parametrize("pair,message", [
    ("learning_rate=0.1", "has no hyper-parameter 'learning_rate'; it has: batch_size, cell"),
    ("lr=fast", "'lr' of entry 'e' must be float, got 'fast'"),
    ("layers=2.5", "must be int"),
    ("tied=maybe", "must be bool"),
    ("layers=none", "must be int, got 'none'"),
    ("when=1,x", "must be int list"),
    ("lr", "not of the form key=value"),
])
def test_bad_overrides_are_rejected_with_a_clear_message(pair: str, message: str) -> None:
    with pytest.raises(HparamError, match=message):
        parse_overrides([pair], SCHEMA, "e")


def test_build_hparams_rejects_wrong_types_and_nonpositive_batch() -> None:
    with pytest.raises(Failure, match="'lr' must be float"):
        build_hparams(MyHparams, {"lr": "x"})
    with pytest.raises(Failure, match="batch_size must be a positive int"):
        build_hparams(MyHparams, {"batch_size": 0})
    with pytest.raises(Failure, match="'when' must be a list of int"):
        build_hparams(MyHparams, {"when": 3})


def test_discover_skips_private_files_and_finds_both_folders(tmp_path: Path) -> None:
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "mine.py").write_text("x = 1\n")
    (tmp_path / "subs" / "_template.py").write_text("x = 1\n")
    found = discover({"submission": tmp_path / "subs", "baseline": REPO / "baselines"})
    assert "mine" in found and "_template" not in found and "unigram" in found
    assert found["unigram"].kind == "baseline"
    with pytest.raises(EntryError, match="no entry named 'nope'.*known: .*mine"):
        select(["nope"], found)


def test_a_submission_taking_a_baseline_name_or_author_line_fails_alone(tmp_path: Path) -> None:
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "kn5.py").write_text("")                                       # a baseline's file name
    (subs / "copy.py").write_text("class E(Entry):\n    name = 'unigram'\n")  # a baseline's name
    (subs / "fake.py").write_text("class E(Entry):\n    authors = 'ptb-harness baselines'\n")
    (subs / "first.py").write_text("class E(Entry):\n    name = 'shared'\n")
    (subs / "second.py").write_text("class E(Entry):\n    name = 'shared'\n")
    (subs / "fine.py").write_text("class E(Entry):\n    name = 'fine'\n")
    found = discover({"submission": subs, "baseline": REPO / "baselines"})
    assert found["kn5"].kind == "baseline" and found["kn5"].problem is None
    assert "taken by baseline kn5.py" in found["submissions/kn5"].problem
    assert "'unigram' is taken by baseline unigram.py" in found["submissions/copy"].problem
    assert "reserved for the harness's baselines" in found["submissions/fake"].problem
    assert found["first"].problem is None and "'shared' is taken by submission first.py" in found["submissions/second"].problem
    assert found["fine"].problem is None


def test_static_metadata_reads_literals_without_running_code(tmp_path: Path) -> None:
    path = tmp_path / "meta.py"
    path.write_text(
        "raise SystemExit('must not run')\n"
        "class E(Entry):\n    name = 'shown'\n    authors = 'Ada'\n    description = 'desc'\n"
    )
    meta = static_metadata(EntrySource.read(path, "submission"))
    assert meta == {"name": "shown", "authors": "Ada", "description": "desc", "track": "causal"}


def test_import_finds_the_one_entry_class_and_checks_the_contract(tmp_path: Path) -> None:
    template = import_entry_class(REPO / "submissions" / "_template.py")
    assert check_entry_class(template) == []

    path = tmp_path / "two.py"
    path.write_text("from harness.contract import Entry\nclass A(Entry): pass\nclass B(Entry): pass\n")
    with pytest.raises(Failure, match="exactly one subclass.*found: A, B"):
        import_entry_class(path)


def test_contract_problems_are_all_reported() -> None:
    class Incomplete(Entry):
        def setup(self, ctx, extra):  # noqa: ANN001 - deliberately wrong
            pass

        def log_probs(self, inputs):  # noqa: ANN001
            pass

    problems = check_entry_class(Incomplete)
    assert any("setup must take 1 argument" in p for p in problems)
    assert any("train_step is not defined" in p for p in problems)
    assert any("log_probs must take 2 argument" in p for p in problems)


def test_names_are_compared_as_a_reader_sees_them_and_deep_nesting_fails_alone(tmp_path: Path) -> None:
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "zw.py").write_text("class E(Entry):\n    name = 'unigram\\u200b'\n")
    (subs / "wide.py").write_text("class E(Entry):\n    authors = '\\u200bPTB-harness baselines'\n")
    (subs / "deep.py").write_text("class E(Entry):\n    name = 'deep'\nX = " + "-" * 3000 + "1\n")
    found = discover({"submission": subs, "baseline": REPO / "baselines"})
    assert "is taken by baseline unigram.py" in found["submissions/zw"].problem
    assert "reserved for the harness's baselines" in found["submissions/wide"].problem
    assert "does not parse" in static_metadata(found["deep"])["description"]


def test_a_name_set_on_an_entry_built_on_a_helper_base_is_read_and_checked(tmp_path: Path) -> None:
    """The loader takes the one Entry subclass nothing derives from; the source reading follows it to
    its bases in the module, so `class Mine(Helper): name = "kn5"` cannot slip past the reserved names."""
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "mine.py").write_text("class Helper(Entry):\n    authors = 'Ada'\n"
                                  "class Mine(Helper):\n    name = 'kn5'\n")
    found = discover({"submission": subs, "baseline": REPO / "baselines"})
    assert static_metadata(found["submissions/mine"])["authors"] == "Ada"
    assert "'kn5' is taken by baseline kn5.py" in found["submissions/mine"].problem


def test_static_metadata_is_valid_utf8_whatever_the_source_escapes(tmp_path: Path) -> None:
    """`authors = "x \\ud800"` is a legal literal whose value no database, terminal or page can encode."""
    path = tmp_path / "odd.py"
    path.write_text('from harness.contract import Entry\n\n\nclass E(Entry):\n    authors = "ada \\ud800"\n'
                    '    description = "fine"\n')
    meta = static_metadata(EntrySource.read(path, "submission"))
    assert meta["authors"] == "ada \ufffd\ufffd\ufffd" and meta["description"] == "fine"
    meta["authors"].encode("utf-8")  # strict: would raise on a lone surrogate
