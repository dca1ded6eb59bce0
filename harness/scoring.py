"""Scoring, on the supervisor's side: the windows, the audits, and the score from log-prob rows.

The supervisor builds every window a scorer sees (segments of whole sentences, left context,
batch rows; masked windows on the mlm track), reads back the full (B, C + W, V) block of
log-probs for each, and computes here, from data it holds itself:
- the checks on every block: finite, log-probabilities (<= 0), normalised within 1e-3;
- each target's NLL from the renormalised row, lp[target] - logsumexp(lp), so the normalisation
  tolerance is worth nothing to an entry;
- the exactly-once invariant and the token counts; per-token NLL for per-sentence NLL;
- causality audits and replay probes: shadow streams of windows of the same shape as scoring
  windows, inserted at random points (one replay is always the last request of a pass), whose
  rows must match the rows of the window they copy.
Nothing here runs participant code or imports anything that does.
"""

from __future__ import annotations

import math
import secrets
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harness.errors import FailureKind
from harness.mlm import IGNORE, eval_masking


class ScoreFailure(Exception):
    """The rows fail a check: the run is `invalid` with this kind and reason."""

    def __init__(self, kind: FailureKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class EvalProtocol:
    """How a split is fed to `log_probs`. Fixed for a competition; part of every run's record."""

    segment_tokens: int = 2048
    """A new segment (fresh state) starts at the first sentence start after this many tokens."""
    batch_size: int = 16
    """Segments scored side by side."""
    window: int = 64
    """W: the most positions scored per `log_probs` call (an entry may ask for fewer)."""
    normalisation_tol: float = 1e-3
    """Largest |logsumexp over the vocabulary| allowed at any position."""
    causality_audits: int = 2
    """Causality audits per pass (one from a fresh state, the others from warm states)."""
    replay_probes: int = 2
    """Windows re-sent from a fresh state per pass (one at a random point, one as the last request)."""
    audit_tol: float = 1e-4
    """Largest difference allowed between a window's rows and the rows of its audit or replay."""
    fingerprint_columns: int = 64
    """Random vocabulary columns (plus the target) kept per position to compare audits with."""


@dataclass(frozen=True)
class SplitScore:
    split: str
    tokens: int
    nll_sum: float
    token_nll: np.ndarray
    """(N,) float64: the NLL of each token of the split, in order (causal track)."""

    @property
    def perplexity(self) -> float:
        return _exp(self.nll_sum / self.tokens)


@dataclass(frozen=True)
class MaskedScore:
    split: str
    tokens: int
    """Masked positions scored."""
    nll_sum: float
    correct: int

    @property
    def perplexity(self) -> float:
        return _exp(self.nll_sum / self.tokens)

    @property
    def accuracy(self) -> float:
        return self.correct / self.tokens


def _exp(mean_nll: float) -> float:
    try:
        return math.exp(mean_nll)
    except OverflowError:  # mean NLL above ~709 nats: a valid, if hopeless, model
        return math.inf


@dataclass
class Request:
    """One `log_probs` call as the scorer sees it: ids, a stream name, fresh or continued state. The
    scorer keeps every stream's state until the next checkpoint is loaded, so nothing in a request
    tells a scoring window from an audit or from the last window of its stream."""

    inputs: np.ndarray
    """(B, L) int32 ids."""
    stream: str
    fresh: bool
    role: str
    """`score`, `replay` or `audit`: known to the supervisor only."""
    ref: tuple[int, int]
    """(group, window) of the scoring window this request is, copies or audits."""
    cut: int = -1
    """For an audit: inputs after this position were changed; positions <= cut are compared."""
    lane: int = 0
    """Which of the two scorer processes answers it. Audits and replays of a window always go to the
    other process than the one that scored it: neither has seen the window it is asked to copy, so
    no memory of past requests lets a model pass an audit it should fail."""


def segment_bounds(targets: np.ndarray, eos_id: int, segment_tokens: int) -> list[tuple[int, int]]:
    """Cut positions [0, N) into segments of whole sentences of about `segment_tokens` each."""
    n = int(targets.size)
    ends = (np.flatnonzero(targets == eos_id) + 1).tolist()  # position after each <eos>
    bounds, start = [], 0
    for end in ends:
        if end - start >= segment_tokens and end < n:
            bounds.append((start, end))
            start = end
    if start < n:
        bounds.append((start, n))
    return bounds


@dataclass
class _Group:
    """Segments scored side by side: their bounds, inputs (rows, C + longest), targets (rows, longest)."""

    bounds: list[tuple[int, int]]
    x: np.ndarray
    y: np.ndarray
    offsets: list[int]
    lane: int = 0


class ScorePass:
    """One scoring pass over a split: its requests in the order sent, and the score they add up to.

    `take(request, rows)` is called with every block of rows, in request order; `result()` at the end.
    """

    def __init__(self, split: str, ids: np.ndarray, eos_id: int, vocab_size: int, protocol: EvalProtocol,
                 context: int, window: int, track: str = "causal", mask_id: int | None = None) -> None:
        self.split, self.ids, self.eos_id, self.vocab_size = split, ids, eos_id, vocab_size
        self.protocol, self.context, self.window = protocol, context, min(window, protocol.window)
        self.track, self.mask_id = track, mask_id
        self.audits = {"causality_audits": 0, "replay_probes": 0}
        self._rng = np.random.default_rng(secrets.randbits(64))  # unknowable to the entry
        self._columns = torch.from_numpy(self._rng.choice(vocab_size, min(vocab_size, protocol.fingerprint_columns),
                                                          replace=False))
        self._prints: dict[tuple[str, tuple[int, int]], list[tuple[Request, torch.Tensor]]] = {}
        self._first_lane = int(self._rng.integers(2))  # groups alternate between the two scorers
        self.groups: list[_Group] = []
        self.requests: list[Request] = []
        if track == "mlm":
            self._plan_masked()
        else:
            self._plan_causal()
        # Windows that an audit or replay copies: their scored rows are fingerprinted too, at the random
        # columns and, per position, at every word that follows it in the window or in any of its audits
        # (the column a peeking model would move).
        self._referenced = {r.ref for r in self.requests if r.role != "score"}
        self._position_columns = self._columns_per_position()

    # --- Planning ------------------------------------------------------------------------------

    def _plan_causal(self) -> None:
        p, c, w = self.protocol, self.context, self.window
        eos_id = int(self.eos_id)
        targets = self.ids
        inputs = np.concatenate([[eos_id], targets[:-1]])  # inputs[i] precedes targets[i]
        bounds = segment_bounds(targets, eos_id, p.segment_tokens)
        primary: list[Request] = []
        for first in range(0, len(bounds), p.batch_size):
            group = bounds[first:first + p.batch_size]
            rows, longest = len(group), max(end - start for start, end in group)
            x = np.full((rows, c + longest), eos_id, dtype=np.int32)  # left-padded with C <eos>
            y = np.full((rows, longest), -1, dtype=np.int64)           # -1: padding, never scored
            for row, (start, end) in enumerate(group):
                x[row, c:c + end - start] = inputs[start:end]
                y[row, :end - start] = targets[start:end]
            offsets = list(range(0, longest, w))
            index = len(self.groups)
            self.groups.append(_Group(group, x, y, offsets, lane=(index + self._first_lane) % 2))
            stream = _stream_name()
            for k, _ in enumerate(offsets):
                primary.append(Request(self._window(index, k), stream, fresh=k == 0,
                                       role="score", ref=(index, k), lane=self.groups[index].lane))
        self.token_nll = np.zeros(targets.size, dtype=np.float64)
        self.times_scored = np.zeros(targets.size, dtype=np.int32)
        shadows = [self._causal_audit(warm=i > 0) for i in range(p.causality_audits)]
        shadows += [self._replay() for _ in range(max(0, p.replay_probes - 1))]
        self.requests = self._interleave(primary, shadows, last=self._replay())

    def _window(self, group: int, k: int) -> np.ndarray:
        g = self.groups[group]
        offset = g.offsets[k]
        width = min(self.window, g.y.shape[1] - offset)
        return g.x[:, offset:offset + self.context + width]  # (rows, C + width)

    def _causal_audit(self, warm: bool) -> list[Request]:
        """A fresh stream that replays the first k windows of a group, then sends window k with every
        input after a random position changed: rows at positions <= that cut must not move."""
        group = int(self._rng.integers(len(self.groups)))
        windows = len(self.groups[group].offsets)
        # Any window of the group, not only the first few: a model that peeks only late in a segment
        # is audited there as often as anywhere (the shadow stream replays the windows before it).
        k = int(self._rng.integers(1, windows)) if warm and windows > 1 else 0
        stream = _stream_name()
        lane = 1 - self.groups[group].lane
        block = [Request(self._window(group, i), stream, fresh=i == 0, role="replay", ref=(group, i),
                         lane=lane) for i in range(k)]
        original = self._window(group, k)
        cut = int(self._rng.integers(0, max(1, original.shape[1] - 1)))
        changed = original.copy()
        shift = self._rng.integers(1, self.vocab_size, size=changed[:, cut + 1:].shape)
        changed[:, cut + 1:] = (changed[:, cut + 1:] + shift) % self.vocab_size
        block.append(Request(changed, stream, fresh=k == 0, role="audit", ref=(group, k), cut=cut,
                             lane=lane))
        self.audits["causality_audits"] += 1
        self.audits["replay_probes"] += k
        return block

    def _replay(self) -> list[Request]:
        group = int(self._rng.integers(len(self.groups)))
        self.audits["replay_probes"] += 1
        lane = 1 - self.groups[group].lane
        inputs = self.groups[group].x if self.track == "mlm" else self._window(group, 0)
        return [Request(inputs, _stream_name(), True, "replay", (group, 0), lane=lane)]

    def _interleave(self, primary: list[Request], shadows: list[list[Request]], last: list[Request]) -> list[Request]:
        """Shadow blocks at random points of the primary sequence (before or after the window they
        copy, so a model cannot wait to see the original first); one replay closes the pass."""
        slots = sorted(int(self._rng.integers(0, len(primary) + 1)) for _ in shadows)
        order = self._rng.permutation(len(shadows))
        result: list[Request] = []
        blocks = iter(shadows[i] for i in order)
        position = 0
        for slot in slots:
            result += primary[position:slot]
            position = slot
            result += next(blocks)
        result += primary[position:]
        return result + last

    def _plan_masked(self) -> None:
        """mlm: fixed masked windows of 128, fresh state each; targets stay here."""
        inputs, targets = eval_masking(torch.from_numpy(self.ids.astype(np.int64)), int(self.mask_id))
        primary = []
        for first in range(0, inputs.shape[0], self.protocol.batch_size):
            x = inputs[first:first + self.protocol.batch_size].numpy().astype(np.int32)
            y = targets[first:first + self.protocol.batch_size].numpy()
            index = len(self.groups)
            self.groups.append(_Group([], x, y, [0], lane=(index + self._first_lane) % 2))
            primary.append(Request(x, _stream_name(), True, "score", (index, 0), lane=self.groups[index].lane))
        self.nll_sum, self.correct, self.masked = 0.0, 0, 0
        self.expected_masked = int((targets != IGNORE).sum())
        shadows = [self._replay() for _ in range(max(0, self.protocol.replay_probes - 1))]
        self.requests = self._interleave(primary, shadows, last=self._replay())

    # --- Taking rows -------------------------------------------------------------------------------

    def take(self, request: Request, rows: torch.Tensor) -> None:
        """Check one block of rows (B, L, V) float32 and account for it."""
        lse = check_rows(rows, self.vocab_size, self.protocol.normalisation_tol)  # (B, L)
        if request.role == "score":
            if self.track == "mlm":
                self._score_masked(request, rows, lse)
            else:
                self._score_causal(request, rows, lse)
        if self._needs_print(request):
            self._prints.setdefault((request.role, request.ref), []).append((request, self._print(request, rows, lse)))

    def _needs_print(self, request: Request) -> bool:
        return request.role != "score" or request.ref in self._referenced

    def _columns_per_position(self) -> dict[tuple[int, int], torch.Tensor]:
        """ref -> (B, L, m) word ids: for position t, the input at t + 1 of the window and of each of its
        audits (the next word, which a model that peeks would favour)."""
        found: dict[tuple[int, int], list[np.ndarray]] = {}
        if self.track == "mlm":  # masked windows: no next word to peek at (replays compare random columns)
            return {}
        for request in self.requests:
            if request.ref in self._referenced and (request.role == "score" or request.role == "audit"):
                following = np.concatenate([request.inputs[:, 1:], request.inputs[:, -1:]], axis=1)  # (B, L)
                found.setdefault(request.ref, []).append(np.clip(following, 0, self.vocab_size - 1).astype(np.int64))
        return {ref: torch.from_numpy(np.stack(arrays, axis=-1)) for ref, arrays in found.items()}

    def _print(self, request: Request, rows: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
        """(B, L, K + m) renormalised log-probs at the random columns and the per-position columns."""
        parts = [rows.index_select(-1, self._columns)]
        columns = self._position_columns.get(request.ref)
        if columns is not None and columns.shape[:2] == rows.shape[:2]:
            parts.append(rows.gather(-1, columns))
        return torch.cat(parts, dim=-1) - lse.unsqueeze(-1)

    def _score_causal(self, request: Request, rows: torch.Tensor, lse: torch.Tensor) -> None:
        group = self.groups[request.ref[0]]
        offset = group.offsets[request.ref[1]]
        width = rows.shape[1] - self.context
        window_targets = torch.from_numpy(group.y[:, offset:offset + width])  # (B, width), -1 = pad
        picked = rows[:, self.context:, :].gather(-1, window_targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        nll = (lse[:, self.context:].double() - picked.double()).numpy()  # renormalised NLL, (B, width)
        for row, (start, end) in enumerate(group.bounds):
            length = max(0, min(width, end - start - offset))
            self.token_nll[start + offset:start + offset + length] = nll[row, :length]
            self.times_scored[start + offset:start + offset + length] += 1

    def _score_masked(self, request: Request, rows: torch.Tensor, lse: torch.Tensor) -> None:
        y = torch.from_numpy(self.groups[request.ref[0]].y)  # (B, 128), IGNORE where not scored
        scored = y != IGNORE
        picked = rows[scored]  # (M, V)
        words = y[scored]
        self.nll_sum += float((lse[scored].double() - picked.gather(1, words.unsqueeze(1)).squeeze(1).double()).sum())
        self.correct += int((picked.argmax(dim=1) == words).sum())
        self.masked += int(scored.sum())

    # --- The verdict ---------------------------------------------------------------------------------

    def result(self) -> SplitScore | MaskedScore:
        """The score, once every request's rows were taken; raises ScoreFailure for a failed audit."""
        self._verify_audits()
        if self.track == "mlm":
            if self.masked != self.expected_masked:
                raise RuntimeError(f"harness bug: {self.split} masked positions not all scored")
            return MaskedScore(self.split, self.masked, self.nll_sum, self.correct)
        if not (self.times_scored == 1).all():  # the protocol's own invariant, never the entry's fault
            raise RuntimeError(f"harness bug: {self.split} tokens scored {np.unique(self.times_scored)} times")
        return SplitScore(self.split, int(self.ids.size), float(self.token_nll.sum()), self.token_nll)

    def _verify_audits(self) -> None:
        tol = self.protocol.audit_tol
        # Replays first: the same inputs from the same fresh state giving other rows means the model
        # changed (or is not deterministic) whatever else it does; only a model that passes every
        # replay and fails an audit is judged on causality.
        for (role, ref), prints in sorted(self._prints.items(), key=lambda item: item[0][0] != "replay"):
            if role == "score":
                continue
            originals = self._prints.get(("score", ref))
            if not originals:
                raise RuntimeError(f"harness bug: no scored rows kept for window {ref}")
            original = originals[0][1]
            for request, copy in prints:
                limit = request.cut + 1 if role == "audit" else original.shape[1]
                drift = float((copy[:, :limit] - original[:, :limit]).abs().max()) if limit > 0 else 0.0
                if not drift <= tol:
                    raise ScoreFailure(*_audit_failure(role, drift, request.cut, self.split))


def _audit_failure(role: str, drift: float, cut: int, split: str) -> tuple[FailureKind, str]:
    if role == "audit":
        return (FailureKind.CAUSALITY_VIOLATION,
                f"causality check failed on {split}: changing the inputs after position {cut} changed the "
                f"log-probs at positions 0..{cut} by up to {drift:.3g}; position t may only depend on "
                "inputs[:, :t+1] and the state (use a causal mask, not a bidirectional model)")
    return (FailureKind.WEIGHTS_MODIFIED,
            f"the entry's weights changed while it was being scored: a {split} window scored again from a "
            f"fresh state gave log-probs that differ by up to {drift:.3g}; log_probs must not update "
            "parameters, buffers or state (nor may anything train in the background), and must be deterministic")


CHUNK_ROWS = 128
_scratch = threading.local()
"""Per thread (runs side by side in one driver each score in their own thread): vocab -> buffer."""


def check_rows(rows: torch.Tensor, vocab_size: int, tol: float) -> torch.Tensor:
    """Finite, <= 0 and normalised at every position; returns logsumexp over V, (B, L)."""
    if rows.dim() != 3 or rows.shape[-1] != vocab_size:
        raise ScoreFailure(FailureKind.INVALID_OUTPUT, f"log_probs rows have shape {tuple(rows.shape)}")
    low, high = (value.item() for value in torch.aminmax(rows))  # one cheap pass
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = (~torch.isfinite(rows)).nonzero()[0].tolist()  # slow path, only to say where
        raise ScoreFailure(FailureKind.INVALID_OUTPUT,
                           f"log_probs holds a non-finite value ({rows[tuple(bad)].item()}) at "
                           f"[batch, position, word] = {bad}")
    if high > tol:
        raise ScoreFailure(FailureKind.INVALID_OUTPUT,
                           f"log_probs holds a positive value ({high:.4g}): these are not log-probabilities")
    lse = _logsumexp(rows)  # (B, L)
    worst = float(lse.abs().max())
    if not worst <= tol:
        raise ScoreFailure(FailureKind.INVALID_OUTPUT,
                           f"log_probs are not normalised: logsumexp over the vocabulary is off 0 by up to "
                           f"{worst:.4g} (tolerance {tol}); return log_softmax of your logits")
    return lse


def _logsumexp(rows: torch.Tensor) -> torch.Tensor:
    """log sum exp over the last axis. Every value is <= tol here, so exp cannot overflow and no max
    is needed; exp runs in chunks into a reused buffer (fresh 40 MB tensors cost more in page faults)."""
    vocab = rows.shape[-1]
    flat = rows.reshape(-1, vocab)
    buffers: dict[int, torch.Tensor] = _scratch.__dict__.setdefault("buffers", {})
    scratch = buffers.get(vocab)
    if scratch is None:
        scratch = buffers[vocab] = torch.empty(CHUNK_ROWS, vocab)
    out = torch.empty(flat.shape[0], dtype=torch.float64)
    for start in range(0, flat.shape[0], CHUNK_ROWS):
        part = flat[start:start + CHUNK_ROWS]
        buffer = scratch[:part.shape[0]]
        torch.exp(part, out=buffer)
        out[start:start + part.shape[0]] = buffer.sum(dim=-1)  # float32 sums of values in [0, 1]
    return out.log_().view(rows.shape[:-1])


def _stream_name() -> str:
    return secrets.token_hex(8)


def sentence_nll(token_nll: np.ndarray, ids: np.ndarray, eos_id: int) -> np.ndarray:
    """(S,) NLL summed over each sentence (its words and its <eos>), in split order."""
    ends = np.flatnonzero(ids == eos_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return np.add.reduceat(token_nll, starts)


def payload_of(request: Request) -> bytes:
    return np.ascontiguousarray(request.inputs, dtype="<i4").tobytes()


def describe_audits(counts: dict[str, Any]) -> str:
    return f"{counts.get('causality_audits', 0)} causality audits, {counts.get('replay_probes', 0)} replay probes"
