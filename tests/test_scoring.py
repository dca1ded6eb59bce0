"""The supervisor's scoring: windows, the exactly-once invariant, checks on rows, renormalised NLL,
and the audits, driven in-process with small models standing in for the two scorer processes."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from harness.errors import FailureKind
from harness.scoring import EvalProtocol, ScoreFailure, ScorePass, check_rows, segment_bounds

V = 50
EOS = 0
Model = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]


def split_ids(n: int = 1_500, seed: int = 0) -> np.ndarray:
    """(n,) random ids with an <eos> every 3..20 tokens, ending in <eos>."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, V, n)
    pos = 0
    while pos < n:
        pos += int(rng.integers(3, 20))
        ids[min(pos, n - 1)] = EOS
    ids[-1] = EOS
    return ids.astype(np.int32)


def drive(plan: ScorePass, models: tuple[Model, Model], initial: Callable[[int], Any] = lambda b: None) -> Any:
    """Answer every request as the two scorer processes would (one model each, own states)."""
    states: list[dict[str, Any]] = [{}, {}]
    for request in plan.requests:
        model, lane_states = models[request.lane], states[request.lane]
        state = initial(request.inputs.shape[0]) if request.fresh else lane_states.pop(request.stream)
        with torch.inference_mode():
            rows, state = model(torch.from_numpy(request.inputs.astype(np.int64)), state)
        lane_states[request.stream] = state
        plan.take(request, rows.float().contiguous())
    return plan.result()


def make_pass(ids: np.ndarray, context: int = 0, window: int = 64, **protocol: Any) -> ScorePass:
    return ScorePass("valid", ids, EOS, V, EvalProtocol(**{"segment_tokens": 100, "batch_size": 4, **protocol}),
                     context, window)


TABLE = torch.randn(V, V, generator=torch.Generator().manual_seed(1)).log_softmax(-1)  # (V, V)


def bigram(inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    return TABLE[inputs], state  # (B, T, V)


def both(model: Model) -> tuple[Model, Model]:
    return model, model


def test_every_token_scored_exactly_once_first_from_eos() -> None:
    ids = split_ids()
    score = drive(make_pass(ids), both(bigram))
    inputs = np.concatenate([[EOS], ids[:-1]])
    expected = -TABLE[torch.from_numpy(inputs).long(), torch.from_numpy(ids).long()].double().numpy()
    assert score.tokens == ids.size
    np.testing.assert_allclose(score.token_nll, expected, rtol=1e-5)


def test_left_context_is_prepended_and_not_scored() -> None:
    seen: list[tuple[int, ...]] = []

    def model(inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        seen.append(tuple(inputs.shape))
        return bigram(inputs, state)

    plain = drive(make_pass(split_ids()), both(bigram))
    wide = drive(make_pass(split_ids(), context=7), both(model))
    assert all(shape[1] <= 7 + 64 for shape in seen) and any(shape[1] == 7 + 64 for shape in seen)
    assert math.isclose(plain.nll_sum, wide.nll_sum, rel_tol=1e-9)


def test_uniform_model_scores_the_vocabulary_size() -> None:
    def uniform(inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return torch.full((*inputs.shape, V), -math.log(V)), state

    assert math.isclose(drive(make_pass(split_ids()), both(uniform)).perplexity, V, rel_tol=1e-5)


@pytest.mark.parametrize("batch_size,window", [(1, 64), (3, 16), (16, 5), (7, 64)])
def test_score_does_not_depend_on_batch_size_or_window(batch_size: int, window: int) -> None:
    lstm = SmallLstm()
    reference = drive(make_pass(split_ids()), both(lstm), lstm.initial)
    other = drive(make_pass(split_ids(), window=window, batch_size=batch_size), both(lstm), lstm.initial)
    assert math.isclose(reference.perplexity, other.perplexity, rel_tol=1e-5)


def test_segments_cover_the_split_and_start_after_eos() -> None:
    ids = split_ids()
    bounds = segment_bounds(ids, EOS, 100)
    assert bounds[0][0] == 0 and bounds[-1][1] == ids.size
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert all(ids[start - 1] == EOS for start, _ in bounds[1:])


class SmallLstm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Embedding(V, 16)
        self.lstm = nn.LSTM(16, 16, batch_first=True)
        self.head = nn.Linear(16, V)
        self.eval()

    def initial(self, batch: int) -> Any:
        return None

    def forward(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        out, state = self.lstm(self.embed(inputs), state)
        return self.head(out).log_softmax(-1), state


@pytest.mark.parametrize("damage,message", [
    (lambda rows: rows.index_fill(2, torch.tensor([3]), float("nan")), "non-finite value (nan)"),
    (lambda rows: rows.index_fill(2, torch.tensor([3]), float("-inf")), "non-finite value (-inf)"),
    (lambda rows: rows * 0.5, "not normalised"),
    (lambda rows: rows.index_fill(2, torch.tensor([3]), 0.5), "positive value"),
])
def test_bad_rows_make_the_run_invalid(damage: Callable[[torch.Tensor], torch.Tensor], message: str) -> None:
    with pytest.raises(ScoreFailure) as caught:
        drive(make_pass(split_ids()), both(lambda x, s: (damage(TABLE[x]), s)))
    assert caught.value.kind is FailureKind.INVALID_OUTPUT and message in caught.value.reason


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("damage,message", [
    (float("nan"), "non-finite value (nan)"), (0.5, "positive value"), (-30.0, "not normalised"),
])
def test_a_check_split_over_threads_sees_every_share(where: str, damage: float, message: str) -> None:
    """Rows checked by several threads (check_rows' workers, one contiguous share each) give the same
    log-sum-exp as one thread, and a bad value fails the check in whichever share it lies."""
    rows = torch.randn(16, 64, 300, generator=torch.Generator().manual_seed(2)).log_softmax(-1)  # (B, L, V)
    one = check_rows(rows, 300, 1e-3, workers=1)
    for workers in (2, 3, 8):
        assert torch.equal(check_rows(rows, 300, 1e-3, workers=workers), one)
    position = {"first": (0, 0), "middle": (8, 3), "last": (15, 63)}[where]
    bad = rows.clone()
    if damage == -30.0:
        bad[position] = bad[position] - 1.0  # a whole row off by one nat: every value still finite, <= 0
    else:
        bad[(*position, 7)] = damage
    with pytest.raises(ScoreFailure) as caught:
        check_rows(bad, 300, 1e-3, workers=3)
    assert caught.value.kind is FailureKind.INVALID_OUTPUT and message in caught.value.reason


def test_the_normalisation_tolerance_buys_nothing() -> None:
    """+0.00099 on every log-prob passes the 1e-3 check but the NLL comes from renormalised rows."""
    honest = drive(make_pass(split_ids()), both(bigram))
    bonus = drive(make_pass(split_ids()), both(lambda x, s: (TABLE[x] + 0.00099, s)))
    assert bonus.nll_sum >= honest.nll_sum * (1 - 1e-6)


def test_causal_models_pass_every_audit() -> None:
    lstm = SmallLstm()
    plan = make_pass(split_ids(), causality_audits=4, replay_probes=3)
    drive(plan, both(lstm), lstm.initial)
    assert plan.audits["causality_audits"] == 4 and plan.audits["replay_probes"] >= 3


def peeking(ahead: int = 1) -> Model:
    """Mixes the input `ahead` positions later into each prediction: not causal."""
    def model(inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        future = torch.roll(inputs, -ahead, dims=1)
        return (TABLE[inputs] + TABLE[future]).log_softmax(-1), state
    return model


def test_bidirectional_and_peeking_models_fail_causality() -> None:
    for seed in range(5):
        with pytest.raises(ScoreFailure) as caught:
            drive(make_pass(split_ids(seed=seed)), both(peeking()))
        assert caught.value.kind is FailureKind.CAUSALITY_VIOLATION


def test_a_peeker_that_remembers_what_it_was_asked_cannot_pass_the_audit() -> None:
    """It peeks at future inputs unless it has seen the window's prefix before, in which case it
    replays its earlier answer: defeated because audits go to the other scorer process."""
    def memoriser() -> Model:
        answers: dict[bytes, torch.Tensor] = {}
        cheat = peeking()

        def model(inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
            rows, _ = cheat(inputs, state)
            rows = rows.clone()
            for b in range(inputs.shape[0]):
                for t in range(inputs.shape[1]):
                    key = inputs[b, :t + 1].numpy().tobytes()
                    if key in answers:
                        rows[b, t] = answers[key]
                    else:
                        answers[key] = rows[b, t]
            return rows, state
        return model

    for seed in range(3):
        with pytest.raises(ScoreFailure) as caught:
            drive(make_pass(split_ids(400, seed=seed), window=16), (memoriser(), memoriser()))
        # Its answers depend on what it was asked before: a replay or an audit in the other process shows it.
        assert caught.value.kind in (FailureKind.CAUSALITY_VIOLATION, FailureKind.WEIGHTS_MODIFIED)


def test_weights_changing_while_scoring_are_caught_by_replays() -> None:
    calls = [0]

    def drifting(inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        calls[0] += 1  # as if a background thread kept training
        return (TABLE * (1 + 0.01 * calls[0])).log_softmax(-1)[inputs], state

    with pytest.raises(ScoreFailure) as caught:
        drive(make_pass(split_ids()), both(drifting))
    assert caught.value.kind in (FailureKind.WEIGHTS_MODIFIED, FailureKind.CAUSALITY_VIOLATION)


def test_shadow_streams_are_shaped_like_scoring_and_go_to_the_other_scorer() -> None:
    """Shadow rows come as windows of the scoring width, fresh then continued, under random stream
    names, each row on the scorer that did not score its segment; the last request is a replay."""
    plan = make_pass(split_ids(), causality_audits=6)
    widths = {r.inputs.shape[1] for r in plan.requests if r.role == "score"}
    shadows = [r for r in plan.requests if r.role == "shadow"]
    assert shadows and plan.audits["causality_audits"] == 6
    assert sum(m.kind == "audit" for r in shadows for m in r.members) == 6
    for request in shadows:
        assert request.inputs.shape[1] in widths and request.inputs.shape[0] <= plan.protocol.batch_size
        assert len(request.members) == request.inputs.shape[0]
        assert all(plan.groups[m.group].lane != request.lane for m in request.members)
    assert plan.requests[-1].role == "replay"
    assert plan.requests[-1].lane != plan.groups[plan.requests[-1].ref[0]].lane
    assert len({r.stream for r in plan.requests}) > len(plan.groups)
    assert {r.lane for r in plan.requests if r.role == "score"} == {0, 1}


def test_audits_fall_on_scored_positions_in_proportion() -> None:
    """Over many passes, the short last group and the short last windows are audited about as often
    as the positions they score, no more (a draw per group would audit a 1-row group as often as a
    full one, letting a model peek wherever the rows are many)."""
    ids = split_ids()
    counts: dict[int, int] = {}
    plan = make_pass(ids)
    share = {g: sum(end - start for start, end in group.bounds) / ids.size for g, group in enumerate(plan.groups)}
    for _ in range(150):
        plan = make_pass(ids, causality_audits=4)
        for request in plan.requests:
            for member in request.members:
                if member.kind == "audit":
                    counts[member.group] = counts.get(member.group, 0) + 1
    total = sum(counts.values())
    for group, fraction in share.items():
        assert abs(counts.get(group, 0) / total - fraction) < 0.07, (counts, share)


def test_audit_cuts_are_scored_positions_whatever_the_context() -> None:
    """Each audit's cut is one of its row's scored positions (never the unscored left context, which
    a model asking for a long one could fill the window with), and every scored position of the
    row can be the cut. From the adversarial review: at C = 1024 cuts drawn over C + W missed the
    scored positions 16 times in 17, and a half-time peeker ended ok at perplexity 29.6."""
    ids, context, window = split_ids(), 40, 16
    seen: set[int] = set()
    for _ in range(40):
        plan = make_pass(ids, context=context, window=window, causality_audits=8)
        for request in plan.requests:
            for member in request.members:
                if member.kind == "audit":
                    start, end = plan.groups[member.group].bounds[member.row]
                    width = min(window, end - start - member.window * window)
                    assert context <= member.cut < context + width, (member, width)
                    seen.add(member.cut - context)
    assert seen == set(range(window))


def test_a_peeker_behind_a_long_context_is_caught() -> None:
    for seed in range(5):
        with pytest.raises(ScoreFailure) as caught:
            drive(make_pass(split_ids(seed=seed), context=40, window=16), both(peeking()))
        assert caught.value.kind is FailureKind.CAUSALITY_VIOLATION


def shape_peeker(rows_peeked: int) -> Model:
    """Peeks only in calls with `rows_peeked` rows (the usual scoring batch), causal otherwise."""
    cheat, honest = peeking(), bigram

    def model(inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return (cheat if inputs.shape[0] == rows_peeked else honest)(inputs, state)
    return model


def test_a_peeker_hiding_in_one_shape_is_caught_on_the_windows_it_peeks_in() -> None:
    """Peeking only in full 4-row windows (most positions): the audits of those windows show it,
    whatever shape the shadow streams take."""
    for seed in range(5):
        with pytest.raises(ScoreFailure) as caught:
            drive(make_pass(split_ids(seed=seed)), both(shape_peeker(4)))
        assert caught.value.kind is FailureKind.CAUSALITY_VIOLATION


def test_a_peeker_on_half_the_windows_is_caught() -> None:
    """Peeking in the windows whose first input is even (about half): each audit lands on one with
    probability about 1/2, so 24 audits miss all of them with probability about 6e-8."""
    cheat = peeking()

    def model(inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        rows, state = bigram(inputs, state)
        peeked, _ = cheat(inputs, state)
        even = (inputs[:, 0] % 2 == 0).view(-1, 1, 1)
        return torch.where(even, peeked, rows), state

    for seed in range(3):
        with pytest.raises(ScoreFailure) as caught:
            drive(make_pass(split_ids(seed=seed), causality_audits=24), both(model))
        assert caught.value.kind is FailureKind.CAUSALITY_VIOLATION
