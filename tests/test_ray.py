"""Runs on a real Ray cluster (tests/ray_cluster.py): a head and a worker node started as separate
`ray start` processes on loopback. The same small competition run local + SQLite and ray +
PostgreSQL agrees run for run; a node killed mid-run leaves its run `interrupted` and the run is
retried elsewhere; two drivers on one database share the work. Slow: real PTB data, real runs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.store import Store
from tests.conftest import ENTRIES, REPO, default_sigint, make_project, run_cli
from tests.ray_cluster import RayCluster, RayClusterError

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one cluster, on one worker

CPU = {"division:cpu": 1}
SHORT = ("--budget", "5", "--evals", "0", "--threads", "1", "--memory", "2GiB", "--no-site")
COMPETITION = ("--budget", "30", *SHORT[2:])
"""kn5 counts for about 3 s idle: 30 s leaves room on a loaded machine, so both executors train it fully."""


@pytest.fixture(scope="module")
def cluster():
    cluster = RayCluster()
    try:
        try:
            cluster.start_head(CPU)
            cluster.add_node(CPU)
            cluster.wait_for_nodes(2)
        except RayClusterError as exc:
            pytest.fail(f"cannot start the Ray cluster: {exc}")
        yield cluster
    finally:
        cluster.stop()


def project_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


def tiny_lstm_capped(folder: Path) -> Path:
    """tests/entries/tiny_lstm.py stopping after 8 steps: deterministic whatever the machine's load,
    so its scores can be compared across executors."""
    source = (ENTRIES / "tiny_lstm.py").read_text()
    capped = source.replace("    lr: float = 3e-3\n", "    lr: float = 3e-3\n    max_steps: int | None = 8\n", 1)
    assert capped != source
    path = folder / "tiny_lstm.py"
    path.write_text(capped)
    return path


def competition(tmp_path: Path) -> Path:
    project = make_project(project_folder(tmp_path), tiny_lstm=tiny_lstm_capped(tmp_path))
    (project / "baselines" / "kn5.py").write_text((REPO / "baselines" / "kn5.py").read_text())
    return project


def by_key(db: str) -> dict[str, list]:
    runs: dict[str, list] = {}
    for run in Store(db, read_only=True).runs():
        runs.setdefault(run.run_key, []).append(run)
    return runs


def test_local_sqlite_and_ray_postgres_agree_run_for_run(cluster: RayCluster, pg_server, tmp_path: Path,
                                                         env: dict[str, str]) -> None:
    project = competition(tmp_path)
    sqlite = str(tmp_path / "local.sqlite")
    postgres = pg_server.new_database("ray")
    local = run_cli("run", "--all", *COMPETITION, "--db", sqlite, cwd=project, env=env)
    assert local.code == 0, local.stderr
    placed = run_cli("run", "--all", *COMPETITION, "--db", postgres, "--executor", "ray", "--ray-address", cluster.address,
                     cwd=project, env=env)
    assert placed.code == 0, placed.stderr
    assert "placed on" in placed.stderr
    here, there = by_key(sqlite), by_key(postgres)
    assert sorted(here) == sorted(there) and len(here) == 3  # identical keys: unigram, kn5, tiny_lstm
    for key, runs in there.items():
        assert len(runs) == 1 and len(here[key]) == 1, "a run lost or duplicated"
        mine, theirs = here[key][0], runs[0]
        assert mine.status == theirs.status == "ok", (theirs.entry, theirs.reason)
        assert "ray node" in theirs.node and theirs.environment["node_hardware"]
        # Nodes sharing this host took CPU leases as local runners do: each run recorded its own CPUs.
        assert theirs.isolation["cpus"] != "all" and theirs.isolation["cpuset"] != "none", theirs.isolation
        assert theirs.test_sentence_nll == mine.test_sentence_nll or mine.entry == "tiny_lstm"
        if mine.entry in ("unigram", "kn5"):  # counting models: bit-identical
            assert (mine.valid_nll_sum, mine.test_nll_sum) == (theirs.valid_nll_sum, theirs.test_nll_sum)
            assert (mine.valid_ppl, mine.test_ppl) == (theirs.valid_ppl, theirs.test_ppl)
        else:  # eight seeded single-threaded steps: the same model, the same scores
            assert mine.steps == theirs.steps == 8
            assert theirs.test_ppl == pytest.approx(mine.test_ppl, rel=1e-6)
    assert here_kn5(here) == pytest.approx(141.19, abs=0.01)


def here_kn5(runs: dict[str, list]) -> float:
    return next(run.test_ppl for group in runs.values() for run in group if run.entry == "kn5")


def run_in_own_division(cluster: RayCluster, tmp_path: Path, env: dict[str, str], division: str,
                        db: str) -> subprocess.Popen[str]:
    """A node that alone declares `division`, and a driver running slow_counter there (not waited for)."""
    cluster.add_node({f"division:{division}": 1})
    project = make_project(project_folder(tmp_path), slow_counter=ENTRIES / "slow_counter.py")
    (project / "competition.toml").write_text(
        f'[divisions.{division}]\ndevice = "cpu"\nbudget = 60\nmemory = "2GiB"\n')
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "slow_counter", "--division", division,
                             "--evals", "0", "--threads", "1", "--no-site", "--db", db, "--executor", "ray",
                             "--ray-address", cluster.address],
                            cwd=project, env={**cluster.env, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_a_node_killed_mid_run_leaves_it_interrupted_and_it_is_retried(cluster: RayCluster, tmp_path: Path,
                                                                        env: dict[str, str]) -> None:
    # A division only a third node declares: the run is sure to land there, and on its replacement.
    db = str(tmp_path / "runs.sqlite")
    driver = run_in_own_division(cluster, tmp_path, env, "fragile", db)
    try:
        node = wait_for_placement(db, driver)
        time.sleep(2)  # well into the run: sandboxes started, training under way
        assert cluster.kill_node("division:fragile") == 1
        cluster.add_node({"division:fragile": 1})  # the replacement the retry lands on
        out, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err
    runs = Store(db, read_only=True).runs()
    assert [run.status for run in runs] == ["interrupted", "ok"], [(r.status, r.reason) for r in runs]
    lost, retried = runs
    assert lost.run_key == retried.run_key and lost.node == node
    assert node in lost.reason and "died mid-run" in lost.reason
    assert retried.node != node and retried.node is not None
    assert "(retry)" in err


def test_runs_of_a_division_whose_nodes_are_all_gone_end_after_the_node_wait(cluster: RayCluster, tmp_path: Path,
                                                                          env: dict[str, str]) -> None:
    """The only node of a division dies and none replaces it: the run is interrupted and retried once, and
    the retry, which no node can take, ends `interrupted` after the node wait instead of waiting for ever."""
    db = str(tmp_path / "runs.sqlite")
    driver = run_in_own_division(cluster, tmp_path, {**env, "HARNESS_RAY_NODE_WAIT": "5"}, "lonely", db)
    try:
        wait_for_placement(db, driver)
        assert cluster.kill_node("division:lonely") == 1
        _, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, err
    runs = Store(db, read_only=True).runs()
    # Usually the node's death is seen first (interrupted, retried) and the retry is stranded; when Ray
    # declares the node dead before the run's own error arrives, the first attempt is the stranded one.
    assert {run.status for run in runs} == {"interrupted"} and len(runs) in (1, 2), [(r.status, r.reason) for r in runs]
    assert all("died mid-run" in run.reason for run in runs[:-1])
    assert "no live node of the Ray cluster has declared 'division:lonely'" in runs[-1].reason


def test_ctrl_c_cancels_the_placed_runs_and_records_them_interrupted(cluster: RayCluster, tmp_path: Path,
                                                                     env: dict[str, str]) -> None:
    project = make_project(project_folder(tmp_path), slow_counter=ENTRIES / "slow_counter.py")
    db = str(tmp_path / "runs.sqlite")
    driver = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "slow_counter", "--hparam", "pause=1",
                               "--budget", "60", *SHORT[2:], "--db", db, "--executor", "ray",
                               "--ray-address", cluster.address],
                              cwd=project, env={**cluster.env, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, preexec_fn=default_sigint)
    try:
        node = wait_for_placement(db, driver)
        time.sleep(1)
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, err
    [run] = Store(db, read_only=True).runs()
    assert (run.status, run.node) == ("interrupted", node) and "interrupted" in run.reason
    deadline = time.monotonic() + 30  # the task was cancelled with force: its worker and sandboxes are gone
    while cluster.running_tasks() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert cluster.running_tasks() == []


def wait_for_placement(db: str, driver: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert driver.poll() is None, driver.communicate()
        if Path(db).exists():
            runs = Store(db, read_only=True).runs()
            if runs and runs[0].node:
                return runs[0].node
        time.sleep(0.3)
    raise AssertionError("the run was never placed")


def test_two_drivers_on_one_database_share_the_work(cluster: RayCluster, pg_server, tmp_path: Path,
                                                     env: dict[str, str]) -> None:
    project = make_project(project_folder(tmp_path))
    db = pg_server.new_database("two")
    args = [sys.executable, "-m", "harness.cli", "run", "unigram", "--seeds", "4", *SHORT, "--db", db,
            "--executor", "ray", "--ray-address", cluster.address]
    drivers = [subprocess.Popen(args, cwd=project, env={**cluster.env, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outputs = [driver.communicate(timeout=300) for driver in drivers]
    finally:
        for driver in drivers:
            if driver.poll() is None:
                driver.kill()
    assert [driver.returncode for driver in drivers] == [0, 0], [err for _, err in outputs]
    runs = Store(db, read_only=True).runs()
    assert sorted(run.seed for run in runs) == [0, 1, 2, 3]  # each seed run once: none lost, none twice
    assert {run.status for run in runs} == {"ok"}
    assert len({run.test_ppl for run in runs}) == 1  # a count model: seeds agree
    assert len({run.lease_holder for run in runs}) == 2, "one driver did all the work"
