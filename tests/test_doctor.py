"""`harness doctor` as a user runs it: a real process on this machine, real data, real databases."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

from harness.doctor import cgroup_layout
from harness.store import Store
from tests.conftest import run_cli

NAMES = ("sandbox", "cgroups", "cgroup memory", "cgroup pids", "cgroup cpu", "cgroup freezer", "data", "database",
         "extra postgres", "extra ray", "gpu")


def findings(stdout: str) -> dict[str, tuple[str, str]]:
    """{name: (mark, detail)} from doctor's lines `MARK name: detail`."""
    found = {}
    for line in stdout.splitlines():
        match = re.fullmatch(r"(ok|MISSING|--)\s+([a-z ]+): (.*)", line)
        assert match, f"not a doctor line: {line!r}"
        found[match.group(2)] = (match.group(1), match.group(3))
    return found


def test_everything_needed_is_here(ptb: Path, tmp_path: Path) -> None:
    result = run_cli("doctor", "--data-dir", str(ptb), "--db", str(tmp_path / "new.sqlite"), cwd=tmp_path)
    found = findings(result.stdout)
    assert tuple(found) == NAMES
    # This machine (and CI) has bubblewrap, the PTB files and a writable folder: all needed things are ok.
    assert result.code == 0, result.stdout + result.stderr
    assert found["sandbox"][0] == "ok" and found["cgroups"][1].startswith("cgroup v")
    assert found["data"] == ("ok", f"ptb.train.txt, ptb.valid.txt, ptb.test.txt in {ptb}: checksums verified")
    assert "the first `harness run` creates it" in found["database"][1]
    for name in ("extra postgres", "extra ray", "gpu"):
        mark, detail = found[name]
        assert mark == "ok" or (mark == "--" and ("pip install" in detail or "torch" in detail)), (name, detail)
    assert not (tmp_path / "new.sqlite").exists()  # the doctor creates nothing


def test_relative_data_dir_is_resolved_where_started_and_then_remembered(ptb: Path, tmp_path: Path) -> None:
    started_in = tmp_path / "project"
    started_in.mkdir()
    relative = os.path.relpath(ptb, started_in)
    first = run_cli("doctor", "--db", "h.sqlite", cwd=started_in, env={"HARNESS_DATA_DIR": relative})
    assert findings(first.stdout)["data"][0] == "ok", first.stdout
    assert f"in {ptb.resolve()}:" in first.stdout  # absolute, resolved against the start folder
    # Next command: no flag, no variable; the verified files were copied into the cache.
    later = run_cli("doctor", "--db", "h.sqlite", cwd=started_in, env={"HARNESS_DATA_DIR": ""})
    mark, detail = findings(later.stdout)["data"]
    assert mark == "ok" and "in the cache" in detail, later.stdout


def test_missing_data_and_a_newer_database_are_reported_with_what_to_do(tmp_path: Path) -> None:
    db = tmp_path / "newer.sqlite"
    Store(db)
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE harness_meta SET value = '99' WHERE key = 'schema_version'")
    (tmp_path / "empty").mkdir()
    result = run_cli("doctor", "--data-dir", str(tmp_path / "empty"), "--db", str(db), cwd=tmp_path,
                     env={"HARNESS_DATA_DIR": ""})
    assert result.code == 1
    found = findings(result.stdout)
    assert found["data"][0] == "MISSING" and "pass --data-dir" in found["data"][1]
    assert found["database"][0] == "MISSING" and "schema version 99" in found["database"][1]
    assert "2 thing(s) needed are missing" in result.stderr


def test_missing_driver_names_the_extra_and_hides_the_password(tmp_path: Path) -> None:
    result = run_cli("doctor", "--db", "postgresql+psycopg2://alice:hunter2@127.0.0.1:9/x", cwd=tmp_path)
    mark, detail = findings(result.stdout)["database"]
    assert mark == "MISSING" and "pip install -e '.[postgres]'" in detail
    assert "hunter2" not in result.stdout + result.stderr and "alice:***@" in detail


def test_cgroup_layout_of_v1_hybrid_and_v2_machines() -> None:
    v1 = "9:name=systemd:/\n8:pids:/\n6:freezer:/\n4:memory:/a/b\n2:cpu,cpuacct:/\n0::/\n"
    assert cgroup_layout(v1) == (1, {"name=systemd": "/", "pids": "/", "freezer": "/", "memory": "/a/b",
                                     "cpu": "/", "cpuacct": "/", "": "/"})
    assert cgroup_layout("0::/user.slice/session-1.scope\n") == (2, {"": "/user.slice/session-1.scope"})
