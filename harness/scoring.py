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
from concurrent.futures import ThreadPoolExecutor
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
    causality_audits: int = 12
    """Windows audited for causality per pass, each one row of one scoring window, drawn in proportion
    to the positions scored (a model peeking on a fraction f of the positions passes n audits with
    probability (1 - f)^n). They are packed into shadow streams: each row replays its segment from a
    fresh state up to the audited window."""
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


@dataclass(frozen=True)
class ShadowRow:
    """One row of a shadow request: the scoring window (group, window) and row it copies, and how it
    is compared with that row's scored log-probs."""

    group: int
    row: int
    window: int
    kind: str
    """`replay`: compared at every position (the row's segment replayed from a fresh state up to its
    audit); `audit`: inputs after `cut` were changed, positions <= cut compared; `after`: the rest of
    the row once its audit is done, not compared."""
    cut: int = -1


@dataclass
class Request:
    """One `log_probs` call as the scorer sees it: ids, a stream name, fresh or continued state. The
    scorer keeps every stream's state until the next checkpoint is loaded, and nothing in a request
    says whether it is scored, replayed or audited."""

    inputs: np.ndarray
    """(B, L) int32 ids."""
    stream: str
    fresh: bool
    role: str
    """`score`, `replay` (a whole scoring window again, from a fresh state) or `shadow` (rows of
    several segments replayed and audited): known to the supervisor only."""
    ref: tuple[int, int]
    """(group, window) of the scoring window this request is or replays; (-1, -1) for a shadow."""
    lane: int = 0
    """Which of the two scorer processes answers it. Replays and audits of a window always go to the
    other process than the one that scored it: neither has seen the window it is asked to copy, so
    no memory of past requests lets a model pass an audit it should fail."""
    members: tuple[ShadowRow, ...] = ()
    """For a shadow request: what each of its rows copies and how it is compared."""


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
                 context: int, window: int, track: str = "causal", mask_id: int | None = None,
                 workers: int = 1) -> None:
        self.split, self.ids, self.eos_id, self.vocab_size = split, ids, eos_id, vocab_size
        self.workers = workers  # threads checking each block: the run's CPU lease
        self.protocol, self.context, self.window = protocol, context, min(window, protocol.window)
        self.track, self.mask_id = track, mask_id
        self.audits = {"causality_audits": 0, "replay_probes": 0}
        self._rng = np.random.default_rng(secrets.randbits(64))  # unknowable to the entry
        self._columns = torch.from_numpy(self._rng.choice(vocab_size, min(vocab_size, protocol.fingerprint_columns),
                                                          replace=False))
        self._prints: dict[tuple[str, tuple[int, int]], list[tuple[Request, torch.Tensor]]] = {}
        self._shadow_prints: list[tuple[ShadowRow, torch.Tensor]] = []
        self._audited: dict[tuple[int, int, int], np.ndarray] = {}  # (group, row, window) -> changed inputs (C + W,)
        self._first_lane = int(self._rng.integers(2))  # groups alternate between the two scorers
        self.groups: list[_Group] = []
        self.requests: list[Request] = []
        if track == "mlm":
            self._plan_masked()
        else:
            self._plan_causal()
        # Windows that a replay or an audit copies: their scored rows are fingerprinted too, at the
        # random columns and, per position, at the word that follows it in the window and in its audit
        # (the columns a peeking model would move).
        self._referenced = {r.ref for r in self.requests if r.role == "replay"}
        self._referenced |= {(m.group, m.window) for r in self.requests for m in r.members if m.kind != "after"}
        self._position_columns = self._columns_per_position()

    # --- Planning ------------------------------------------------------------------------------

    def _plan_causal(self) -> None:
        p, c, w = self.protocol, self.context, self.window
        eos_id = int(self.eos_id)
        targets = self.ids
        inputs = np.concatenate([[eos_id], targets[:-1]])  # inputs[i] precedes targets[i]
        bounds = segment_bounds(targets, eos_id, p.segment_tokens)
        streams: list[list[Request]] = []
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
            streams.append([Request(self._window(index, k), stream, fresh=k == 0, role="score", ref=(index, k),
                                    lane=self.groups[index].lane) for k in range(len(offsets))])
        # Window k of every group, then window k + 1 of every group: a scorer with two groups
        # alternates between them, so its next request in flight is never its stream's next window.
        primary = [stream[k] for k in range(max(map(len, streams), default=0)) for stream in streams if k < len(stream)]
        self.token_nll = np.zeros(targets.size, dtype=np.float64)
        self.times_scored = np.zeros(targets.size, dtype=np.int32)
        shadows = self._shadow_streams(p.causality_audits)
        shadows += [self._replay() for _ in range(max(0, p.replay_probes - 1))]
        self.requests = self._interleave(primary, shadows, last=self._replay())

    def _window(self, group: int, k: int) -> np.ndarray:
        g = self.groups[group]
        offset = g.offsets[k]
        width = min(self.window, g.y.shape[1] - offset)
        return g.x[:, offset:offset + self.context + width]  # (rows, C + width)

    def _shadow_streams(self, count: int) -> list[list[Request]]:
        """Shadow streams auditing `count` scoring windows, one row of one window each.

        Segments are drawn in proportion to their length and, within a segment, the audited window
        in proportion to the positions it scores: every scored position is as likely to be audited
        as any other, wherever it lies (a late window, the short last group, a short last window).
        Each audit goes to the scorer that did not score its segment, as one row of a shadow stream
        of up to `batch_size` rows: the row replays its segment from a fresh state window by window
        (compared in full with the scored rows: the same inputs from the same state must give the
        same log-probs) and, at the audited window, every input after a random cut is changed
        (positions <= cut compared: they may only depend on inputs up to the cut). Packing many
        audits in one stream costs the replay of the longest of them, not of each.
        """
        c, w = self.context, self.window
        segments = [(g, i, end - start) for g, group in enumerate(self.groups)
                    for i, (start, end) in enumerate(group.bounds)]
        count = min(count, len(segments))
        if count <= 0:
            return []
        lengths = np.array([length for _, _, length in segments], dtype=np.float64)
        chosen = self._rng.choice(len(segments), size=count, replace=False, p=lengths / lengths.sum())
        by_lane: dict[int, list[tuple[int, int, int, int]]] = {0: [], 1: []}
        for index in chosen:
            g, i, length = segments[int(index)]
            scored = np.minimum(w, length - np.arange(0, length, w))  # positions scored by each window
            k = int(self._rng.choice(scored.size, p=scored / scored.sum()))
            # The cut is one of the row's scored positions, each as likely as any: every input after it
            # is changed and it must not move. (A cut anywhere in C + width would mostly fall in the
            # unscored left context of a model that asks for a long one, and test nothing that counts.)
            width = int(scored[k])  # positions of the row that window k scores
            cut = c + int(self._rng.integers(0, width))
            by_lane[1 - self.groups[g].lane].append((g, i, k, cut))
        streams = []
        for lane, audits in by_lane.items():
            audits.sort(key=lambda audit: audit[2])  # rows audited at similar depths share a stream
            for first in range(0, len(audits), self.protocol.batch_size):
                streams.append(self._shadow_stream(audits[first:first + self.protocol.batch_size], lane))
        return streams

    def _shadow_stream(self, audits: list[tuple[int, int, int, int]], lane: int) -> list[Request]:
        """One fresh stream, a row per audit (group, row, window, cut), as long as its deepest audit."""
        c, w = self.context, self.window
        windows = max(k for _, _, k, _ in audits) + 1
        x = np.full((len(audits), c + windows * w), self.eos_id, dtype=np.int32)  # (R, C + T * W)
        for r, (g, i, _, _) in enumerate(audits):
            source = self.groups[g].x[i]  # (C + longest of its group,), left-padded as when scored
            x[r, :min(source.size, x.shape[1])] = source[:x.shape[1]]
        stream, requests = _stream_name(), []
        for j in range(windows):
            inputs = x[:, j * w:j * w + c + w].copy()  # (R, C + W): a copy, windows overlap by C
            members = []
            for r, (g, i, k, cut) in enumerate(audits):
                if j == k:
                    shift = self._rng.integers(1, self.vocab_size, size=inputs.shape[1] - cut - 1)
                    inputs[r, cut + 1:] = (inputs[r, cut + 1:] + shift) % self.vocab_size
                    self._audited[(g, i, j)] = inputs[r].copy()
                kind = "replay" if j < k else "audit" if j == k else "after"
                members.append(ShadowRow(g, i, j, kind, cut if j == k else -1))
            requests.append(Request(inputs, stream, fresh=j == 0, role="shadow", ref=(-1, -1), lane=lane,
                                    members=tuple(members)))
        self.audits["causality_audits"] += len(audits)
        self.audits["replay_probes"] += sum(k for _, _, k, _ in audits)
        return requests

    def _replay(self) -> list[Request]:
        group = int(self._rng.integers(len(self.groups)))
        self.audits["replay_probes"] += 1
        lane = 1 - self.groups[group].lane
        inputs = self.groups[group].x if self.track == "mlm" else self._window(group, 0)
        return [Request(inputs, _stream_name(), True, "replay", (group, 0), lane=lane)]

    def _interleave(self, primary: list[Request], shadows: list[list[Request]], last: list[Request]) -> list[Request]:
        """A random interleaving of the primary sequence and every shadow stream, each kept in its
        own order (a shadow's windows come before or after the windows they copy, so a model cannot
        wait to see the original first); one replay closes the pass. Spread out rather than sent as
        blocks, shadow windows keep both scorers busy: a scorer never holds two windows of one
        stream, so a block of one stream would leave it one request at a time and the other idle."""
        queues = [primary, *shadows]
        taken = [0] * len(queues)
        result: list[Request] = []
        remaining = np.array([len(queue) for queue in queues], dtype=np.float64)
        while remaining.sum() > 0:
            pick = int(self._rng.choice(len(queues), p=remaining / remaining.sum()))
            result.append(queues[pick][taken[pick]])
            taken[pick] += 1
            remaining[pick] -= 1
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
        lse = check_rows(rows, self.vocab_size, self.protocol.normalisation_tol, self.workers)  # (B, L)
        if request.role == "shadow":
            self._print_shadow(request, rows, lse)
            return
        if request.role == "score":
            if self.track == "mlm":
                self._score_masked(request, rows, lse)
            else:
                self._score_causal(request, rows, lse)
        if request.role != "score" or request.ref in self._referenced:
            self._prints.setdefault((request.role, request.ref), []).append((request, self._print(request, rows, lse)))

    def _columns_per_position(self) -> dict[tuple[int, int], torch.Tensor]:
        """ref -> (B, L, 2) word ids: for position t of each row, the input at t + 1 in the scoring
        window and in the row's audit where it has one (else the window's again): the next word,
        which a model that peeks would favour."""
        if self.track == "mlm":  # masked windows: no next word to peek at (replays compare random columns)
            return {}
        found: dict[tuple[int, int], torch.Tensor] = {}
        for ref in self._referenced:
            window = self._window(*ref)  # (B, L)
            following = np.concatenate([window[:, 1:], window[:, -1:]], axis=1)  # (B, L)
            changed = following.copy()
            for (g, i, k), inputs in self._audited.items():
                if (g, k) == ref:
                    length = min(window.shape[1], inputs.size)
                    changed[i, :length] = np.concatenate([inputs[1:], inputs[-1:]])[:length]
            both = np.stack([following, changed], axis=-1)  # (B, L, 2)
            found[ref] = torch.from_numpy(np.clip(both, 0, self.vocab_size - 1).astype(np.int64))
        return found

    def _print(self, request: Request, rows: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
        """(B, L, K + 2) renormalised log-probs at the random columns and the per-position columns."""
        parts = [rows.index_select(-1, self._columns)]
        columns = self._position_columns.get(request.ref)
        if columns is not None and columns.shape[:2] == rows.shape[:2]:
            parts.append(rows.gather(-1, columns))
        return torch.cat(parts, dim=-1) - lse.unsqueeze(-1)

    def _print_shadow(self, request: Request, rows: torch.Tensor, lse: torch.Tensor) -> None:
        """Each compared row's (L, K + 2) renormalised log-probs at the columns of the row it copies."""
        for r, member in enumerate(request.members):
            if member.kind == "after":
                continue
            columns = self._position_columns[(member.group, member.window)][member.row]  # (L_scored, 2)
            length = min(rows.shape[1], columns.shape[0])
            row = rows[r, :length]  # (length, V)
            parts = [row.index_select(-1, self._columns), row.gather(-1, columns[:length])]
            self._shadow_prints.append((member, torch.cat(parts, dim=-1) - lse[r, :length].unsqueeze(-1)))

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
        for (role, ref), prints in self._prints.items():
            if role == "score":
                continue
            original = self._original(ref)
            for _, copy in prints:
                drift = float((copy - original).abs().max())
                if not drift <= tol:
                    raise ScoreFailure(*_audit_failure("replay", drift, -1, self.split))
        # Then each shadow row's replayed windows (its batch is another), then its audited window.
        for kind in ("replay", "audit"):
            for member, copy in self._shadow_prints:
                if member.kind != kind:
                    continue
                original = self._original((member.group, member.window))[member.row]  # (L, K + 2)
                limit = min(copy.shape[0], original.shape[0], member.cut + 1 if kind == "audit" else copy.shape[0])
                drift = float((copy[:limit] - original[:limit]).abs().max()) if limit > 0 else 0.0
                if not drift <= tol:
                    raise ScoreFailure(*_audit_failure("row" if kind == "replay" else kind, drift, member.cut,
                                                       self.split))

    def _original(self, ref: tuple[int, int]) -> torch.Tensor:
        """The fingerprint of the scored window `ref`, (B, L, K + 2)."""
        originals = self._prints.get(("score", ref))
        if not originals:
            raise RuntimeError(f"harness bug: no scored rows kept for window {ref}")
        return originals[0][1]


def _audit_failure(kind: str, drift: float, cut: int, split: str) -> tuple[FailureKind, str]:
    """kind: `audit` (a row with its inputs after `cut` changed), `row` (a row replayed in a shadow
    stream, among other rows), `replay` (a whole window again, its batch unchanged)."""
    if kind == "audit":
        return (FailureKind.CAUSALITY_VIOLATION,
                f"causality check failed on {split}: changing the inputs after position {cut} changed the "
                f"log-probs at positions 0..{cut} by up to {drift:.3g}; position t may only depend on "
                "inputs[:, :t+1] and the state (use a causal mask, not a bidirectional model)")
    if kind == "row":
        return (FailureKind.CAUSALITY_VIOLATION,
                f"causality check failed on {split}: a row scored again with the same inputs from a fresh "
                f"state, in a batch of other rows, gave log-probs that differ by up to {drift:.3g}; a row's "
                "log-probs may depend only on its own inputs and state, never on the batch's size or its "
                "other rows")
    return (FailureKind.WEIGHTS_MODIFIED,
            f"the entry's weights changed while it was being scored: a {split} window scored again from a "
            f"fresh state gave log-probs that differ by up to {drift:.3g}; log_probs must not update "
            "parameters, buffers or state (nor may anything train in the background), and must be deterministic")


CHUNK_ROWS = 128
_scratch = threading.local()
"""Per thread (runs side by side in one driver each score in their own thread): vocab -> buffer."""
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
MAX_CHECK_WORKERS = 8


def check_rows(rows: torch.Tensor, vocab_size: int, tol: float, workers: int = 1) -> torch.Tensor:
    """Finite, <= 0 and normalised at every position; returns logsumexp over V, (B, L).

    `workers`: threads that share the work (the run's CPU lease). Every value goes through one exp,
    the cost of a log_softmax; for a cheap model that is most of the scoring time, and one thread
    would leave the run's other cores idle while the scorers wait for it. Each worker takes a
    contiguous share of the positions (torch ops release the GIL; each runs single-threaded)."""
    if rows.dim() != 3 or rows.shape[-1] != vocab_size:
        raise ScoreFailure(FailureKind.INVALID_OUTPUT, f"log_probs rows have shape {tuple(rows.shape)}")
    flat = rows.reshape(-1, vocab_size)  # (B * L, V), a view of the supervisor's own copy
    shares = _shares(flat, workers)
    if len(shares) == 1:
        parts = [_check_share(flat)]
    else:
        pool = _check_pool()
        futures = [pool.submit(_check_share, share) for share in shares[1:]]
        parts = [_check_share(shares[0])] + [future.result() for future in futures]
    if not all(math.isfinite(part[0]) and math.isfinite(part[1]) for part in parts):  # (min and max skip a NaN)
        bad = (~torch.isfinite(rows)).nonzero()[0].tolist()  # slow path, only to say where
        raise ScoreFailure(FailureKind.INVALID_OUTPUT,
                           f"log_probs holds a non-finite value ({rows[tuple(bad)].item()}) at "
                           f"[batch, position, word] = {bad}")
    high = max(part[1] for part in parts)
    if high > tol:
        raise ScoreFailure(FailureKind.INVALID_OUTPUT,
                           f"log_probs holds a positive value ({high:.4g}): these are not log-probabilities")
    lse = torch.cat([part[2] for part in parts]).log_().view(rows.shape[:-1])  # (B, L)
    worst = float(lse.abs().max())
    if not worst <= tol:
        raise ScoreFailure(FailureKind.INVALID_OUTPUT,
                           f"log_probs are not normalised: logsumexp over the vocabulary is off 0 by up to "
                           f"{worst:.4g} (tolerance {tol}); return log_softmax of your logits")
    return lse


def _shares(flat: torch.Tensor, workers: int) -> list[torch.Tensor]:
    """Contiguous shares of the rows, whole chunks each, at most one per worker."""
    chunks = -(-flat.shape[0] // CHUNK_ROWS)
    count = max(1, min(workers, MAX_CHECK_WORKERS, chunks))
    per = -(-chunks // count) * CHUNK_ROWS
    return [flat[start:start + per] for start in range(0, flat.shape[0], per)]


def _check_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(MAX_CHECK_WORKERS, thread_name_prefix="check-rows")
        return _pool


def _check_share(flat: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """(min, max, sum of exp per row (N,) float64) of rows (N, V). The sums are only meaningful
    once min and max show every value finite and <= tol: then exp cannot overflow and no max is
    needed. exp runs in chunks into a reused buffer (fresh 40 MB tensors cost more in page faults)."""
    low, high = (value.item() for value in torch.aminmax(flat))
    vocab = flat.shape[-1]
    buffers: dict[int, torch.Tensor] = _scratch.__dict__.setdefault("buffers", {})
    scratch = buffers.get(vocab)
    if scratch is None:
        scratch = buffers[vocab] = torch.empty(CHUNK_ROWS, vocab)
    sums = torch.empty(flat.shape[0], dtype=torch.float64)
    for start in range(0, flat.shape[0], CHUNK_ROWS):
        part = flat[start:start + CHUNK_ROWS]
        buffer = scratch[:part.shape[0]]
        torch.exp(part, out=buffer)
        sums[start:start + part.shape[0]] = buffer.sum(dim=-1)  # float32 sums of values in [0, 1]
    return low, high, sums


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
