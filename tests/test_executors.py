"""The executor interface without a cluster: the driver's choice of executor and hardware class, the
digest a node re-checks, and the node body of a Ray task run in this process on a synthetic corpus
(real sandbox, real run). The cluster itself is exercised in tests/test_ray.py (slow)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import time
from pathlib import Path

import pytest

from harness.budget import RunLimits
from harness.checking import synthetic_data
from harness.config import parse_competition
from harness.entries import EntrySource
from harness.errors import ConfigError, DataError, RunStatus
from harness.execution import RunSpec
from harness.executors import LocalExecutor, _run_on_node, data_digest, make_executor
from harness.provenance import hardware_fingerprint
from harness.scoring import EvalProtocol
from harness.supervisor import RunRequest
from tests.conftest import ENTRIES


def test_cluster_settings_come_from_the_config_and_are_checked() -> None:
    competition = parse_competition({"cluster": {"executor": "ray", "ray_address": "head:6379"}}, "c.toml")
    assert (competition.executor, competition.ray_address) == ("ray", "head:6379")
    assert parse_competition({}, "c.toml").executor == "local"
    with pytest.raises(ConfigError, match="executor must be one of local, ray"):
        parse_competition({"cluster": {"executor": "slurm"}}, "c.toml")
    with pytest.raises(ConfigError, match="unknown key 'workers'"):
        parse_competition({"cluster": {"workers": 3}}, "c.toml")


def test_a_declared_hardware_class_keys_the_runs_instead_of_the_drivers_machine() -> None:
    divisions = {"divisions": {"gpu": {"device": "cuda", "budget": 300, "memory": "40GiB", "hardware": "cuda:H100"}}}
    division = parse_competition(divisions, "c.toml").divisions["gpu"]
    assert division.hardware == "cuda:H100"
    entry = EntrySource.read(ENTRIES / "slow_counter.py", "submission")
    limits = RunLimits(seconds=5, memory_bytes=2**30)
    here = RunRequest(entry=entry, hparams={}, seed=0, device="cpu", threads=1, limits=limits)
    declared = dataclasses.replace(here, hardware="cpu:declared")
    assert here.hardware_class() == hardware_fingerprint("cpu", 1)
    assert declared.row_fields({})["hardware"] == "cpu:declared"
    assert here.key({}) != declared.key({})
    # The cores a run gets are part of its hardware: a 1-thread result never stands in for a 2-thread one.
    if (os.cpu_count() or 1) >= 2:
        assert dataclasses.replace(here, threads=2).key({}) != here.key({})
    assert hardware_fingerprint("cpu", 10_000) == hardware_fingerprint("cpu")  # at most the machine's


def test_the_digest_covers_every_token_id() -> None:
    data = synthetic_data()
    digest = data_digest(data)
    assert digest == data_digest(dataclasses.replace(data, test=data.test.copy()))
    changed = data.test.copy()
    changed[-1] = (changed[-1] + 1) % len(data.vocab)
    assert data_digest(dataclasses.replace(data, test=changed)) != digest


def test_the_executor_is_chosen_by_name(tmp_path: Path) -> None:
    from harness.sandbox import Confinement

    assert isinstance(make_executor("local", Confinement(), tmp_path, None, "auto"), LocalExecutor)
    with pytest.raises(ConfigError, match="--executor must be one of"):
        make_executor("slurm", Confinement(), tmp_path, None, "auto")


def spec_for(source: str) -> RunSpec:
    return RunSpec(entry_name="e", source=source, source_hash=hashlib.sha256(source.encode()).hexdigest(),
                   track="causal", hparams={"max_steps": 3, "pause": 0.0}, seed=0, device="cpu", threads=1,
                   limits=RunLimits(seconds=30, memory_bytes=4 * 2**30, evals=0),
                   protocol=EvalProtocol(segment_tokens=512, batch_size=4))


def test_the_node_body_streams_placement_phases_and_the_result() -> None:
    """The body of a Ray task, called here outside Ray (the cluster runs it in tests/test_ray.py)."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    data = synthetic_data()
    stream = list(_run_on_node(spec_for((ENTRIES / "slow_counter.py").read_text()), data, data_digest(data), "bwrap"))
    assert stream[0] == {"type": "placed", "node": socket.gethostname(), "hardware": hardware_fingerprint("cpu", 1)}
    assert {"type": "phase", "phase": "scoring"} in stream
    last = stream[-1]
    assert last["type"] == "result" and last["result"].status is RunStatus.OK, last["result"].reason
    assert last["environment"]["node_sandbox"] == "bwrap" and last["environment"]["node_hardware"]


def test_the_node_refuses_token_ids_that_do_not_match_the_drivers_digest() -> None:
    pytest.importorskip("ray", reason="the ray extra is not installed")
    data = synthetic_data()
    stream = _run_on_node(spec_for((ENTRIES / "slow_counter.py").read_text()), data, "0" * 64, "bwrap")
    assert next(stream)["type"] == "placed"
    with pytest.raises(DataError, match="do not match the driver's digest"):
        next(stream)


def test_a_driver_that_stalls_past_its_lease_does_not_record_over_the_takeover(tmp_path: Path, tiny_corpus) -> None:
    """A real run whose driver stalls (its event sink blocks) past its lease while another driver
    turns the row `interrupted` and claims the key again: the stalled driver's result is refused,
    reported as lost, and leaves neither row nor per-token files behind."""
    from harness.data import DataSource, load_corpus
    from harness.store import Store
    from harness.supervisor import Supervisor

    db = tmp_path / "r.sqlite"
    stalled = Store(db, holder="stalled-driver", lease_seconds=0.5, keep_alive=False)
    other = Store(db, holder="other-driver")
    corpus = load_corpus(DataSource(data_dir=tiny_corpus.folder, cache_dir=tmp_path / "c", files=tiny_corpus.files))
    entry = EntrySource.read(ENTRIES / "slow_counter.py", "submission")
    request = RunRequest(entry=entry, hparams={"max_steps": 6, "pause": 0.1}, seed=0, device="cpu", threads=1,
                         limits=RunLimits(seconds=30, memory_bytes=4 * 2**30, evals=0),
                         protocol=EvalProtocol(segment_tokens=512, batch_size=4))
    taken_over: list[int] = []

    def stall_once(event: dict) -> None:
        if event["type"] == "progress" and not taken_over:
            time.sleep(0.8)  # the driver hangs past its lease; the other driver takes the key
            assert other.mark_abandoned() == 1
            action, retry = other.claim_run(request.key(dict(corpus.checksums)), frozenset({"ok"}),
                                            **request.row_fields(dict(corpus.checksums)))
            assert action == "new"
            taken_over.append(retry)

    with Supervisor(stalled, corpus, tmp_path / "runs", on_event=stall_once) as supervisor:
        [outcome] = supervisor.run_all([request], frozenset({"ok"}))
    assert taken_over, "the run never reported progress"
    assert outcome.status == RunStatus.INTERRUPTED and "no longer held by this harness" in outcome.reason
    lost = other.get_run(outcome.run_id)
    assert lost.status == "interrupted" and "lease expired" in lost.reason and lost.test_ppl is None
    assert other.get_run(taken_over[0]).status == "running"
    assert not list((tmp_path / "runs").glob(f"{outcome.run_id}/*_token_nll.npy"))


def test_a_ctrl_c_just_after_the_result_is_stored_keeps_its_per_token_files(tmp_path: Path, tiny_corpus) -> None:
    """Ctrl-C landing after the row's commit (inside finish_run's clean-up) leaves the run `ok` with
    its per-token NLL files: only a lost claim removes them."""
    from harness.data import DataSource, load_corpus
    from harness.store import Store
    from harness.supervisor import Supervisor

    class InterruptedAfterCommit(Store):
        def finish_run(self, run_id, status, holder=None, **fields):
            super().finish_run(run_id, status, holder, **fields)
            raise KeyboardInterrupt  # as if Ctrl-C came between the commit and the return

    store = InterruptedAfterCommit(tmp_path / "r.sqlite")
    corpus = load_corpus(DataSource(data_dir=tiny_corpus.folder, cache_dir=tmp_path / "c", files=tiny_corpus.files))
    request = RunRequest(entry=EntrySource.read(ENTRIES / "slow_counter.py", "submission"),
                         hparams={"max_steps": 2, "pause": 0.0}, seed=0, device="cpu", threads=1,
                         limits=RunLimits(seconds=30, memory_bytes=4 * 2**30, evals=0),
                         protocol=EvalProtocol(segment_tokens=512, batch_size=4))
    with Supervisor(store, corpus, tmp_path / "runs") as supervisor, pytest.raises(KeyboardInterrupt):
        supervisor.run_all([request], frozenset({"ok"}))
    [run] = store.runs()
    assert run.status == "ok"
    assert sorted(p.name for p in (tmp_path / "runs" / str(run.id)).glob("*_token_nll.npy")) == [
        "test_token_nll.npy", "valid_token_nll.npy"]
