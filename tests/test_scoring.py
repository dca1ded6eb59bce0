"""The evaluation protocol and its checks, driven in-process on small models."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from harness.contract import Entry
from harness.errors import EntryFailure, FailureKind
from harness.scoring import (
    EvalProtocol, audit_causality, parameter_count, score_split, scoring_mode, segment_bounds,
)

V = 50
EOS = 0
CPU = torch.device("cpu")


def split_ids(n: int = 1_500, seed: int = 0) -> torch.Tensor:
    """(n,) random ids with an <eos> every 3..20 tokens, ending in <eos>."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (n,), generator=g)
    pos = 0
    while pos < n:
        pos += int(torch.randint(3, 20, (1,), generator=g))
        ids[min(pos, n - 1)] = EOS
    ids[-1] = EOS
    return ids


class Bigram(Entry):
    """log p(next | current) from a fixed random table: stateless and exactly computable."""

    def __init__(self, context: int = 0) -> None:
        g = torch.Generator().manual_seed(1)
        self.table = torch.randn(V, V, generator=g).log_softmax(-1)  # (V, V)
        self.eval_context = context

    def log_probs(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return self.table[inputs], state  # (B, T, V)


class SmallLstm(Entry):
    def __init__(self) -> None:
        torch.manual_seed(3)
        self.embed = nn.Embedding(V, 16)
        self.lstm = nn.LSTM(16, 16, batch_first=True)
        self.head = nn.Linear(16, V)
        self.seen_modes: list[tuple[bool, bool]] = []

    def log_probs(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        self.seen_modes.append((torch.is_inference_mode_enabled(), self.lstm.training))
        out, state = self.lstm(self.embed(inputs), state)
        return self.head(out).log_softmax(-1), state


def score(entry: Entry, ids: torch.Tensor, **protocol: Any) -> Any:
    with scoring_mode(entry):
        return score_split(entry, ids, eos_id=EOS, vocab_size=V, device=CPU,
                           protocol=EvalProtocol(**{"segment_tokens": 200, **protocol}), split="test")


def audit(entry: Entry, ids: torch.Tensor) -> None:
    with scoring_mode(entry):
        audit_causality(entry, ids, eos_id=EOS, vocab_size=V, device=CPU,
                        protocol=EvalProtocol(window=16), seed=0)


def test_every_token_scored_exactly_once_first_from_eos() -> None:
    ids = split_ids()
    entry = Bigram()
    result = score(entry, ids, window=7, batch_size=3)
    inputs = torch.cat([torch.tensor([EOS]), ids[:-1]])
    expected = -entry.table[inputs, ids].double()  # (N,): token i predicted from token i-1
    assert result.tokens == ids.numel()
    assert torch.allclose(torch.from_numpy(result.token_nll), expected, atol=1e-6)
    assert result.token_nll[0] == pytest.approx(-entry.table[EOS, ids[0]].item(), abs=1e-6)
    assert result.perplexity == pytest.approx(math.exp(expected.mean().item()), rel=1e-9)


def test_left_context_is_prepended_and_not_scored() -> None:
    ids = split_ids()
    plain = score(Bigram(context=0), ids, window=16)
    with_context = score(Bigram(context=5), ids, window=16)
    assert with_context.tokens == plain.tokens
    assert with_context.nll_sum == pytest.approx(plain.nll_sum, rel=1e-12)


def test_uniform_model_scores_the_vocabulary_size() -> None:
    class Uniform(Entry):
        def log_probs(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
            return torch.full((*inputs.shape, V), -math.log(V)), state

    assert score(Uniform(), split_ids()).perplexity == pytest.approx(V, rel=1e-6)


@pytest.mark.parametrize("batch_size,window", [(1, 64), (4, 64), (16, 13), (100, 200)])
def test_score_does_not_depend_on_batch_size_or_window(batch_size: int, window: int) -> None:
    ids = split_ids(2_000)
    reference = score(SmallLstm(), ids, batch_size=2, window=32).perplexity
    assert score(SmallLstm(), ids, batch_size=batch_size, window=window).perplexity == pytest.approx(reference, rel=1e-5)


def test_segments_cover_the_split_and_start_after_eos() -> None:
    ids = split_ids(3_000)
    bounds = segment_bounds(ids, EOS, 200)
    assert bounds[0][0] == 0 and bounds[-1][1] == ids.numel()
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert all(ids[start - 1] == EOS for start, _ in bounds[1:])
    assert all(end - start >= 200 for start, end in bounds[:-1])


def test_scoring_runs_in_inference_and_eval_mode_then_restores_training() -> None:
    entry = SmallLstm()
    entry.lstm.train(True)
    score(entry, split_ids(300))
    assert set(entry.seen_modes) == {(True, False)}
    assert entry.lstm.training is True
    assert parameter_count(entry) == sum(p.numel() for m in (entry.embed, entry.lstm, entry.head)
                                         for p in m.parameters())


class Broken(Entry):
    def __init__(self, output: Any) -> None:
        self.output = output

    def log_probs(self, inputs: torch.Tensor, state: Any) -> Any:
        return self.output(inputs), state


def uniform(inputs: torch.Tensor) -> torch.Tensor:
    return torch.full((*inputs.shape, V), -math.log(V))


@pytest.mark.parametrize("output,message", [
    (lambda x: uniform(x)[..., :-1], "shape"),
    (lambda x: uniform(x)[:, :-1], "shape"),
    (lambda x: torch.zeros((*x.shape, V), dtype=torch.long), "dtype"),
    (lambda x: torch.randn(*x.shape, V), "positive value|not normalised"),
    (lambda x: uniform(x) - 0.01, "not normalised"),
    (lambda x: uniform(x).index_fill(1, torch.tensor([3]), float("nan")), "non-finite"),
    (lambda x: uniform(x).index_fill(2, torch.tensor([7]), float("-inf")), "non-finite"),
])
def test_bad_outputs_make_the_run_invalid(output: Any, message: str) -> None:
    with pytest.raises(EntryFailure, match=message) as failure:
        score(Broken(output), split_ids(300))
    assert failure.value.kind is FailureKind.INVALID_OUTPUT
    assert failure.value.kind.status.value == "invalid"


def test_output_that_is_not_a_pair_is_invalid() -> None:
    class NoState(Entry):
        def log_probs(self, inputs: torch.Tensor, state: Any) -> Any:
            return uniform(inputs)

    with pytest.raises(EntryFailure, match="must return a tuple") as failure:
        score(NoState(), split_ids(300))
    assert failure.value.kind is FailureKind.INVALID_OUTPUT


def test_causal_models_pass_the_audit() -> None:
    audit(SmallLstm(), split_ids())
    audit(Bigram(context=4), split_ids())


def test_bidirectional_model_fails_causality() -> None:
    class Bidirectional(SmallLstm):
        def log_probs(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
            h = self.embed(inputs)
            h = h + h.mean(dim=1, keepdim=True)  # every position sees the whole window
            return self.head(h).log_softmax(-1), state

    with pytest.raises(EntryFailure, match="causality check failed") as failure:
        audit(Bidirectional(), split_ids())
    assert failure.value.kind is FailureKind.CAUSALITY_VIOLATION


def test_model_peeking_one_token_ahead_fails_causality() -> None:
    class PeekAhead(Bigram):
        def log_probs(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
            following = torch.cat([inputs[:, 1:], inputs[:, -1:]], dim=1)  # the next input: the target
            return self.table[following], state

    with pytest.raises(EntryFailure) as failure:
        audit(PeekAhead(), split_ids())
    assert failure.value.kind is FailureKind.CAUSALITY_VIOLATION


def test_mixing_rows_of_a_batch_fails_causality() -> None:
    class RowMixer(SmallLstm):
        def log_probs(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
            h = self.embed(inputs)
            h = h + h.flip(0).cumsum(1).flip(1)  # row 0 sees the future of row 1
            return self.head(h).log_softmax(-1), state

    with pytest.raises(EntryFailure) as failure:
        audit(RowMixer(), split_ids())
    assert failure.value.kind is FailureKind.CAUSALITY_VIOLATION


def test_changing_weights_while_scoring_is_caught() -> None:
    class Drifting(SmallLstm):
        def log_probs(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
            self.head.bias.add_(1e-3)  # "dynamic evaluation" on the test split
            return super().log_probs(inputs, state)

    with pytest.raises(EntryFailure, match="weights changed") as failure:
        score(Drifting(), split_ids(300))
    assert failure.value.kind is FailureKind.WEIGHTS_MODIFIED


def test_changing_a_tensor_attribute_while_scoring_is_caught() -> None:
    class Counting(Bigram):
        def log_probs(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
            self.table[0, 0] += 0.0001
            return super().log_probs(inputs, state)

    with pytest.raises(EntryFailure) as failure:
        score(Counting(), split_ids(300))
    assert failure.value.kind is FailureKind.WEIGHTS_MODIFIED
