"""One run end to end through `execute_run`: real sandboxed trainer and scorers on a small synthetic
corpus. What the supervisor measures, counts and decides, and how each failure is classified."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest

from harness.budget import RunLimits
from harness.checking import synthetic_data
from harness.errors import FailureKind, RunStatus
from harness.execution import RunResult, RunSpec, execute_run
from harness.sandbox import bwrap_problem, resolve_confinement
from harness.scoring import EvalProtocol

HEAD = '''
import json, math, time
from dataclasses import dataclass
import torch
from harness.contract import Entry, Hparams

@dataclass
class H(Hparams):
    batch_size: int = 4
    seq_len: int = 50
    max_steps: int | None = None
    max_epochs: int | None = None

class Base(Entry):
    Hparams = H
    def setup(self, ctx):
        self.V = ctx.vocab_size
        self.logits = torch.zeros(ctx.vocab_size)
        self.calls = []
    def train_step(self, inputs, targets):
        self.logits += 0.01 * torch.bincount(targets.flatten(), minlength=self.V)
        return 1.0
    def log_probs(self, inputs, state):
        return self.logits.log_softmax(-1).expand(*inputs.shape, -1), state
'''


def run(tmp_path: Path, body: str, seconds: float = 30.0, evals: int = 0, **spec: object) -> RunResult:
    source = HEAD + textwrap.dedent(body)
    if bwrap_problem():
        pytest.fail(f"the sandbox is needed: {bwrap_problem()}")
    run_spec = RunSpec(entry_name="e", source=source, source_hash=hashlib.sha256(source.encode()).hexdigest(),
                       track="causal", hparams=dict(spec.pop("hparams", {})), seed=0, device="cpu", threads=1,
                       limits=RunLimits(seconds=seconds, memory_bytes=4 * 2**30, evals=evals),
                       protocol=EvalProtocol(segment_tokens=512, batch_size=4), **spec)
    return execute_run(run_spec, synthetic_data(), resolve_confinement("bwrap"), tmp_path / "run")


def test_hooks_run_in_order_and_counts_come_from_the_supervisor(tmp_path: Path) -> None:
    result = run(tmp_path, '''
        class E(Base):
            def on_epoch_start(self, epoch): self.calls.append(f"start{epoch}")
            def on_epoch_end(self, epoch): self.calls.append(f"end{epoch}")
            def on_validation(self, info): self.calls.append(f"valid{info.pass_index}/{info.passes}:{info.last}")
            def prepare_for_eval(self): self.calls.append("prepare")
            def resume_training(self): self.calls.append("resume")
            def on_train_end(self):
                self.calls.append("train_end")
                print("CALLS", json.dumps(self.calls))
                print("CLOCK", self.clock.elapsed)
            def setup(self, ctx):
                super().setup(ctx)
                self.clock = ctx.clock
    ''', hparams={"max_epochs": 2}, eval_at_steps=(3,))
    assert result.status is RunStatus.OK, result.reason
    # ctx.clock is the supervisor's, as of the last batch handed over
    clock = float(result.log_tail.split("CLOCK ", 1)[1].split()[0])
    assert 0 < clock <= result.train_seconds
    assert result.hooks["on_epoch_end"] == 2 and result.hooks["on_validation"] == 1
    assert result.cpu_seconds and result.cpu_seconds > 0 and result.max_threads >= 1
    assert result.peak_memory_bytes > 0 and result.scorer_peak_memory_bytes > 0
    calls = json.loads(result.log_tail.split("CALLS ", 1)[1].splitlines()[0])
    assert calls == ["start0", "prepare", "resume", "valid0/1:True", "end0", "start1", "end1", "train_end"]
    steps_per_epoch = -(-(4_000 // 4) // 50)
    assert result.steps == 2 * steps_per_epoch and result.epochs == 2.0 and result.stop_reason == "max_epochs"
    assert result.tokens == 2 * 4 * (4_000 // 4)
    assert len(result.curve) == 1 and result.curve[0]["steps"] == 3
    assert result.audits["causality_audits"] >= 4 and result.audits["replay_probes"] >= 4
    assert result.valid.tokens == 6_000 and result.test.tokens == 3_000


def test_batches_handed_out_ahead_change_no_count_hook_or_boundary(tmp_path: Path) -> None:
    """The supervisor hands the next batch out before the trainer asks (so it never waits on the
    channel), yet epochs, hooks, passes and counts fall exactly where they would one at a time."""
    result = run(tmp_path, '''
        class E(Base):
            def on_epoch_start(self, epoch): self.calls.append(f"start{epoch}")
            def on_epoch_end(self, epoch): self.calls.append(f"end{epoch}")
            def on_validation(self, info): self.calls.append("valid")
            def train_step(self, inputs, targets):
                time.sleep(0.3)
                self.calls.append("step")
                return 1.0
            def on_train_end(self):
                print("CALLS", json.dumps(self.calls))
    ''', seconds=30.0, evals=1, hparams={"max_epochs": 3})  # ~18 s of steps; the pass is due at 15 s
    assert result.status is RunStatus.OK, result.reason
    assert result.prefetched > 0  # batches did go out ahead
    steps_per_epoch = -(-(4_000 // 4) // 50)
    calls = json.loads(result.log_tail.split("CALLS ", 1)[1].splitlines()[0])
    epochs = " ".join(c for c in calls if c != "valid").split("start")[1:]
    assert [e.split() for e in epochs] == [[str(i), *["step"] * steps_per_epoch, f"end{i}"] for i in range(3)]
    assert calls.count("valid") == 1 and result.hooks["train_step"] == 3 * steps_per_epoch
    assert result.steps == 3 * steps_per_epoch and result.stop_reason == "max_epochs"
    assert result.tokens == 3 * 4 * (4_000 // 4) and result.epochs == 3.0


def test_a_child_that_stops_taking_messages_fails_as_its_own_doing(tmp_path: Path) -> None:
    """The trainer shuts its channel for reading at import: the supervisor's next send fails. That is
    the entry's doing, classified as such, not a fault of the harness (which is never the entry's
    result, and is run again)."""
    result = run(tmp_path, '''
        import os, socket, sys
        _channel = socket.socket(fileno=os.dup(int(sys.argv[-1])))
        _channel.shutdown(socket.SHUT_RD)
        class E(Base):
            pass
    ''', hparams={"max_steps": 3})
    assert result.status is RunStatus.FAILED, result.reason
    assert result.failure is not FailureKind.HARNESS_ERROR, result.reason
    assert result.failure in (FailureKind.SANDBOX_VIOLATION, FailureKind.RUNTIME_ERROR), result.reason


def test_the_budget_stops_training_and_validation_passes_are_not_timed(tmp_path: Path) -> None:
    result = run(tmp_path, '''
        class E(Base):
            def train_step(self, inputs, targets):
                time.sleep(0.05)
                return 1.0
            def log_probs(self, inputs, state):
                time.sleep(0.2)  # slow scoring: if passes were timed, training would get far fewer steps
                return super().log_probs(inputs, state)
    ''', seconds=6.0, evals=2)
    assert result.status is RunStatus.OK, result.reason
    assert result.stop_reason == "budget" and 6.0 <= result.train_seconds < 6.0 + 1.5
    assert len(result.curve) == 2 and not result.paused_counted
    # Each pass sleeps 0.2 s in every one of its ~30 requests; were passes timed, the first curve point
    # (due at 2 s of training) would read over 8 s and the run would have stopped before the second.
    assert result.curve[0]["train_seconds"] < 3.5 and result.curve[1]["train_seconds"] < 5.5
    assert result.steps >= result.curve[1]["steps"] > result.curve[0]["steps"] > 0


def test_a_step_that_never_returns_is_killed_at_budget_plus_grace(tmp_path: Path) -> None:
    result = run(tmp_path, '''
        class E(Base):
            def train_step(self, inputs, targets):
                while True:
                    time.sleep(1)
    ''', seconds=3.0)
    assert result.status is RunStatus.TIMEOUT and result.failure is FailureKind.TIMEOUT
    assert "past the 3 s budget plus 2 s grace" in result.reason


def test_failures_are_classified_with_their_traceback(tmp_path: Path) -> None:
    nan = run(tmp_path / "a", '''
        class E(Base):
            def train_step(self, inputs, targets): return float("nan")
    ''')
    assert nan.failure is FailureKind.NON_FINITE and "non-finite loss" in nan.reason
    bad = run(tmp_path / "b", '''
        class E(Base):
            def train_step(self, inputs, targets): return [1.0, 2.0]
    ''')
    assert bad.failure is FailureKind.CONTRACT_VIOLATION and "train_step must return the loss" in bad.reason
    crash = run(tmp_path / "c", '''
        class E(Base):
            def train_step(self, inputs, targets): raise IndexError("deliberate")
    ''')
    assert crash.failure is FailureKind.RUNTIME_ERROR and "train_step (step 0) raised IndexError" in crash.reason
    assert "deliberate" in crash.traceback
    huge = run(tmp_path / "d", "class E(Base): pass\n", hparams={"batch_size": 50_000})
    assert huge.failure is FailureKind.CONTRACT_VIOLATION and "batch_size 50000" in huge.reason


def test_training_in_the_background_while_scoring_is_caught(tmp_path: Path) -> None:
    result = run(tmp_path, '''
        import threading
        class E(Base):
            def setup(self, ctx):
                super().setup(ctx)
                if ctx.role == "scorer":
                    def drift():
                        while True:
                            self.logits = self.logits + 0.5 * torch.randn(self.V)  # whole tensors: rows stay normalised
                            time.sleep(0.01)
                    threading.Thread(target=drift, daemon=True).start()
    ''', hparams={"max_steps": 2})
    assert result.status is RunStatus.INVALID, result.reason
    assert result.failure in (FailureKind.WEIGHTS_MODIFIED, FailureKind.CAUSALITY_VIOLATION)


def test_an_entry_may_validate_at_every_epoch_end_and_choose_its_windows(tmp_path: Path) -> None:
    result = run(tmp_path, '''
        class E(Base):
            validate_every_epoch = True
            def setup(self, ctx):
                super().setup(ctx)
                self.lengths = iter([10, 30] * 1000)
            def next_seq_len(self):
                return next(self.lengths)  # variable BPTT: the stream still continues row by row
    ''', evals=3, hparams={"max_epochs": 2})
    assert result.status is RunStatus.OK, result.reason
    per_row = 4_000 // 4
    # A pass at the end of every epoch but the last, which the final scoring takes the place of.
    assert [point["tokens"] for point in result.curve] == [4 * per_row]
    assert result.tokens == 2 * 4 * per_row and result.steps == 2 * (per_row // 40) * 2  # windows of 10, 30, 10...


FREEZE_PROBE = '''
    import threading
    class E(Base):
        def setup(self, ctx):
            super().setup(ctx)
            self._beats = [time.monotonic()]
            def beat():
                while True:
                    self._beats.append(time.monotonic())
                    time.sleep(0.01)
            threading.Thread(target=beat, daemon=True).start()
        def _gap(self):
            beats = self._beats + [time.monotonic()]
            return max(b - a for a, b in zip(beats, beats[1:]))
        def train_step(self, inputs, targets):
            time.sleep(0.02)
            return 1.0
        def on_train_end(self):
            print("TRAINER_GAP", self._gap(), flush=True)
        def load_state_dict(self, state):
            print("SCORER_GAP", self._gap(), flush=True)  # the longest it was stopped before this load
            super().load_state_dict(state)
        def log_probs(self, inputs, state):
            time.sleep(0.05)  # passes long enough to see
            return super().log_probs(inputs, state)
'''


def test_the_trainer_runs_nothing_during_a_pass_and_the_scorers_nothing_while_it_trains(tmp_path: Path) -> None:
    """A thread in the trainer and in each scorer notes the time every 10 ms: the trainer's longest
    silence covers a whole validation pass (its cgroup was frozen), and a pass scorer's covers the
    training between two passes (frozen too)."""
    result = run(tmp_path, FREEZE_PROBE, seconds=9.0, evals=2)
    assert result.status is RunStatus.OK, result.reason
    trainer_gap = float(result.log_tail.split("TRAINER_GAP ", 1)[1].split()[0])
    assert trainer_gap >= 0.9 * min(p["scoring"] for p in result.pass_seconds)
    scorer_gaps = [float(part.split()[0]) for part in result.log_tail.split("SCORER_GAP ")[1:]]
    training_between = result.curve[1]["train_seconds"] - result.curve[0]["train_seconds"]
    assert max(scorer_gaps) >= 0.9 * training_between > 1.0


def test_without_a_freezer_the_passes_count_as_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.sandbox import Cgroup

    monkeypatch.setattr(Cgroup, "can_freeze", property(lambda self: False))
    result = run(tmp_path, '''
        class E(Base):
            def log_probs(self, inputs, state):
                time.sleep(0.05)
                return super().log_probs(inputs, state)
    ''', seconds=6.0, evals=1)
    assert result.status is RunStatus.OK, result.reason
    assert result.paused_counted and "none" in result.isolation["freezer"]
    # The pass (seconds of scoring) ran on the training clock: its point was taken after it.
    assert result.curve[0]["train_seconds"] >= 3.0 + 0.9 * result.pass_seconds[0]["scoring"]


def test_the_score_does_not_depend_on_the_window_or_a_context_set_in_setup(tmp_path: Path) -> None:
    body = '''
        class E(Base):
            eval_window = WINDOW
            def setup(self, ctx):
                super().setup(ctx)
                self.eval_context = CONTEXT  # an instance value, chosen in setup
                # bigram counts with the previous word hashed into 97 buckets: a model whose rows depend
                # on the input at every position, small enough to check and copy quickly
                self.pairs = torch.ones(97, ctx.vocab_size)
            def train_step(self, inputs, targets):
                self.pairs.index_put_((inputs.flatten() % 97, targets.flatten()), torch.ones(targets.numel()), accumulate=True)
                return 1.0
            def log_probs(self, inputs, state):
                rows = self.pairs[inputs % 97]  # (B, C + W, V)
                return (rows / rows.sum(-1, keepdim=True)).log(), state
    '''
    scores = {}
    for window, context in ((64, 0), (35, 0), (64, 7)):
        source = body.replace("WINDOW", str(window)).replace("CONTEXT", str(context))
        result = run(tmp_path / f"{window}-{context}", source, hparams={"max_epochs": 1})
        assert result.status is RunStatus.OK, result.reason
        assert (result.window, result.context) == (window, context)
        scores[(window, context)] = (result.valid.nll_sum, result.test.nll_sum)
    reference = scores[(64, 0)]
    for key, (valid, test) in scores.items():
        assert abs(valid - reference[0]) <= 1e-6 * abs(reference[0]), key
        assert abs(test - reference[1]) <= 1e-6 * abs(reference[1]), key
