"""The evaluation protocol and the checks every scored run must pass.

The protocol is the harness's, not the entry's: the split is cut into segments of whole
sentences, segments are batched side by side and fed in windows, and every target token is scored
exactly once. Segment boundaries depend only on the split, never on the batch size, so the score
does not depend on how many segments share a batch (beyond float noise).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harness.contract import Entry
from harness.errors import EntryFailure, FailureKind


@dataclass(frozen=True)
class EvalProtocol:
    """How a split is fed to `log_probs`. Fixed for a competition; part of every run's record."""

    segment_tokens: int = 2048
    """A new segment (fresh state) starts at the first sentence start after this many tokens."""
    batch_size: int = 16
    """Segments scored side by side."""
    window: int = 64
    """W: positions scored per `log_probs` call."""
    normalisation_tol: float = 1e-3
    """Largest |logsumexp over the vocabulary| allowed at any position."""
    causality_windows: int = 4
    causality_tol: float = 1e-4


@dataclass(frozen=True)
class SplitScore:
    split: str
    tokens: int
    nll_sum: float
    token_nll: np.ndarray
    """(N,) float64: the negative log-likelihood of each token of the split, in order."""

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.tokens

    @property
    def perplexity(self) -> float:
        try:
            return math.exp(self.mean_nll)
        except OverflowError:  # mean NLL above ~709 nats: a valid, if hopeless, model
            return math.inf


def segment_bounds(targets: torch.Tensor, eos_id: int, segment_tokens: int) -> list[tuple[int, int]]:
    """Cut positions [0, N) into segments of whole sentences of about `segment_tokens` each.

    targets: (N,) ids of the split. A segment ends just after an `<eos>` once it is at least
    `segment_tokens` long, so the next one starts a sentence; the last takes the rest.
    """
    n = int(targets.numel())
    ends = (targets == eos_id).nonzero().flatten().add(1).tolist()  # position after each <eos>
    bounds, start = [], 0
    for end in ends:
        if end - start >= segment_tokens and end < n:
            bounds.append((start, end))
            start = end
    if start < n:
        bounds.append((start, n))
    return bounds


def score_split(
    entry: Entry, targets: torch.Tensor, *, eos_id: int, vocab_size: int, device: torch.device,
    protocol: EvalProtocol, split: str,
) -> SplitScore:
    """Score every token of `targets` (N,) once; call inside `scoring_mode(entry)`."""
    n = int(targets.numel())
    inputs = torch.cat([torch.tensor([eos_id]), targets[:-1]])  # inputs[i] precedes targets[i]
    token_nll = np.zeros(n, dtype=np.float64)
    times_scored = np.zeros(n, dtype=np.int32)
    bounds = segment_bounds(targets, eos_id, protocol.segment_tokens)
    for first in range(0, len(bounds), protocol.batch_size):
        group = bounds[first:first + protocol.batch_size]
        _score_group(entry, inputs, targets, group, token_nll, times_scored,
                     eos_id=eos_id, vocab_size=vocab_size, device=device, protocol=protocol)
    if not (times_scored == 1).all():  # the protocol's own invariant, never the entry's fault
        raise RuntimeError(f"harness bug: {split} tokens scored {np.unique(times_scored)} times")
    return SplitScore(split=split, tokens=n, nll_sum=float(token_nll.sum()), token_nll=token_nll)


def _score_group(
    entry: Entry, inputs: torch.Tensor, targets: torch.Tensor, group: list[tuple[int, int]],
    token_nll: np.ndarray, times_scored: np.ndarray, *, eos_id: int, vocab_size: int,
    device: torch.device, protocol: EvalProtocol,
) -> None:
    context = entry.eval_context
    rows, longest = len(group), max(end - start for start, end in group)
    # x: (rows, C + longest) inputs, left-padded with C <eos>; y: (rows, longest) targets, -1 = pad.
    x = torch.full((rows, context + longest), eos_id, dtype=torch.long)
    y = torch.full((rows, longest), -1, dtype=torch.long)
    for row, (start, end) in enumerate(group):
        x[row, context:context + end - start] = inputs[start:end]
        y[row, :end - start] = targets[start:end]
    x = x.to(device)
    check = OutputChecker(vocab_size, device, protocol.normalisation_tol)
    state = entry.initial_state(rows)
    for offset in range(0, longest, protocol.window):
        width = min(protocol.window, longest - offset)
        out = entry.log_probs(x[:, offset:offset + context + width], state)
        log_probs, state = unpack_output(out)
        check(log_probs, rows, context + width)
        window_targets = y[:, offset:offset + width]  # (rows, width)
        picked = log_probs[:, context:, :].gather(
            -1, window_targets.clamp(min=0).unsqueeze(-1).to(log_probs.device)
        ).squeeze(-1)  # (rows, width)
        nll = (-picked).double().cpu().numpy()
        for row, (start, end) in enumerate(group):
            length = max(0, min(width, end - start - offset))
            token_nll[start + offset:start + offset + length] = nll[row, :length]
            times_scored[start + offset:start + offset + length] += 1


def unpack_output(out: Any) -> tuple[torch.Tensor, Any]:
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], torch.Tensor)):
        raise EntryFailure(
            FailureKind.INVALID_OUTPUT,
            f"log_probs must return a tuple (log_probs tensor, state), got {type(out).__name__}",
        )
    return out[0], out[1]


class OutputChecker:
    """Checks each `log_probs` output: shape (B, C + W, V), float dtype, device, finite, normalised.

    Holds a scratch buffer: exp() into fresh 40 MB tensors costs more in page faults than in
    arithmetic, so the normalisation sums run in reused chunks.
    """

    CHUNK_ROWS = 128

    def __init__(self, vocab_size: int, device: torch.device, tol: float) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.tol = tol
        self._scratch = torch.empty(self.CHUNK_ROWS, vocab_size, device=device)

    def __call__(self, log_probs: torch.Tensor, rows: int, positions: int) -> None:
        expected = (rows, positions, self.vocab_size)
        if tuple(log_probs.shape) != expected:
            raise EntryFailure(
                FailureKind.INVALID_OUTPUT,
                f"log_probs returned shape {tuple(log_probs.shape)}, expected {expected} "
                "(batch, positions, vocabulary)",
            )
        if not log_probs.is_floating_point():
            raise EntryFailure(FailureKind.INVALID_OUTPUT,
                               f"log_probs returned dtype {log_probs.dtype}, expected a float dtype")
        if log_probs.device.type != self.device.type:
            raise EntryFailure(FailureKind.INVALID_OUTPUT,
                               f"log_probs returned a tensor on {log_probs.device}, expected {self.device}")
        self._check_finite(log_probs)
        worst = self._normalisation_error(log_probs)
        if not worst <= self.tol:
            raise EntryFailure(
                FailureKind.INVALID_OUTPUT,
                f"log_probs are not normalised: logsumexp over the vocabulary is off 0 by up to {worst:.4g} "
                f"(tolerance {self.tol}); return log_softmax of your logits",
            )

    def _check_finite(self, log_probs: torch.Tensor) -> None:
        # aminmax is one cheap pass; isfinite() would allocate a (B, T, V) bool tensor.
        low, high = (value.item() for value in torch.aminmax(log_probs))
        if not (math.isfinite(low) and math.isfinite(high)):
            bad = (~torch.isfinite(log_probs)).nonzero()[0].tolist()  # slow path, only to say where
            raise EntryFailure(
                FailureKind.INVALID_OUTPUT,
                f"log_probs holds a non-finite value ({log_probs[tuple(bad)].item()}) at "
                f"[batch, position, word] = {bad}",
            )
        if high > self.tol:
            raise EntryFailure(FailureKind.INVALID_OUTPUT,
                               f"log_probs holds a positive value ({high:.4g}): these are not log-probabilities")

    def _normalisation_error(self, log_probs: torch.Tensor) -> float:
        """max over positions of |log sum_v exp(log_probs[..., v])|; values are <= tol, so exp is safe."""
        flat = log_probs.reshape(-1, self.vocab_size)  # (B * (C + W), V)
        worst = 0.0
        for start in range(0, flat.shape[0], self.CHUNK_ROWS):
            part = flat[start:start + self.CHUNK_ROWS]
            scratch = self._scratch[:part.shape[0]]
            torch.exp(part, out=scratch)
            worst = max(worst, scratch.sum(dim=-1).log().abs().max().item())
        return worst


def audit_causality(
    entry: Entry, targets: torch.Tensor, *, eos_id: int, vocab_size: int, device: torch.device,
    protocol: EvalProtocol, seed: int,
) -> None:
    """Change every input after a random position p; log-probs at positions <= p must not move.

    Call inside `scoring_mode(entry)`. Two rows per window, so mixing across rows is caught too.
    """
    generator = torch.Generator().manual_seed(seed)
    check = OutputChecker(vocab_size, device, protocol.normalisation_tol)
    length = entry.eval_context + protocol.window
    inputs = torch.cat([torch.tensor([eos_id]), targets[:-1]])
    limit = inputs.numel() - length
    for _ in range(protocol.causality_windows):
        starts = torch.randint(length, max(length + 1, limit), (2,), generator=generator).tolist()
        x = torch.stack([inputs[s:s + length] for s in starts])  # (2, length)
        prefix = torch.stack([inputs[s - length:s] for s in starts])  # what came just before
        cut = int(torch.randint(0, length - 1, (1,), generator=generator))
        shift = torch.randint(1, vocab_size, x[:, cut + 1:].shape, generator=generator)
        changed = x.clone()
        changed[:, cut + 1:] = (x[:, cut + 1:] + shift) % vocab_size  # every later token differs
        # From a fresh state, and from the state a real preceding window leaves: a model must not
        # be causal only when its state is empty.
        for state_of in (lambda: entry.initial_state(2), lambda: _state_after(entry, prefix, device, check)):
            first, _ = unpack_output(entry.log_probs(x.to(device), state_of()))
            check(first, 2, length)
            second, _ = unpack_output(entry.log_probs(changed.to(device), state_of()))
            check(second, 2, length)
            drift = (first[:, :cut + 1].float() - second[:, :cut + 1].float()).abs().max().item()
            if drift > protocol.causality_tol:
                raise EntryFailure(
                    FailureKind.CAUSALITY_VIOLATION,
                    f"causality check failed: changing the inputs after position {cut} changed the "
                    f"log-probs at positions 0..{cut} by up to {drift:.3g}; position t may only "
                    "depend on inputs[:, :t+1] (use a causal mask, not a bidirectional model)",
                )


def _state_after(entry: Entry, prefix: torch.Tensor, device: torch.device, check: OutputChecker) -> Any:
    """The state after reading `prefix` from a fresh state (computed anew for every use)."""
    log_probs, state = unpack_output(entry.log_probs(prefix.to(device), entry.initial_state(prefix.shape[0])))
    check(log_probs, prefix.shape[0], prefix.shape[1])
    return state


# --- Weights: what the entry holds, and proof that scoring leaves it alone --------------------


def entry_modules(entry: Entry) -> list[torch.nn.Module]:
    return [value for _, value in _attributes(entry) if isinstance(value, torch.nn.Module)]


def entry_tensors(entry: Entry) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter and buffer of the entry's modules, and every tensor attribute."""
    for name, value in _attributes(entry):
        if isinstance(value, torch.nn.Module):
            for key, tensor in value.state_dict(keep_vars=True).items():
                yield f"{name}.{key}", tensor
        elif isinstance(value, torch.Tensor):
            yield name, value


def _attributes(entry: Entry) -> Iterator[tuple[str, Any]]:
    """Attributes of the entry, looking one level into lists, tuples and dicts."""
    for name, value in sorted(vars(entry).items()):
        if isinstance(value, (list, tuple)):
            yield from ((f"{name}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, dict):
            yield from ((f"{name}[{key!r}]", item) for key, item in value.items())
        else:
            yield name, value


def parameter_count(entry: Entry) -> int:
    seen: set[int] = set()
    total = 0
    for module in entry_modules(entry):
        for parameter in module.parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                total += parameter.numel()
    return total


def weights_fingerprint(entry: Entry) -> str:
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in entry_tensors(entry):
            data = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(name.encode())
            digest.update(str(data.dtype).encode())
            digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


@contextmanager
def scoring_mode(entry: Entry) -> Iterator[None]:
    """Eval mode and `torch.inference_mode()` inside; raises WEIGHTS_MODIFIED if weights changed."""
    modules = entry_modules(entry)
    was_training = [module.training for module in modules]
    before = weights_fingerprint(entry)
    for module in modules:
        module.train(False)
    try:
        with torch.inference_mode():
            yield
    finally:
        for module, mode in zip(modules, was_training):
            module.train(mode)
    if weights_fingerprint(entry) != before:
        raise EntryFailure(
            FailureKind.WEIGHTS_MODIFIED,
            "the entry's weights changed while it was being scored; log_probs must not update "
            "parameters, buffers or tensor attributes",
        )
