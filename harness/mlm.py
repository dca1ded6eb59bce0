"""The masked-LM track (`track = "mlm"`): BERT-style masking for training and a fixed masking for scoring.

A bidirectional model cannot be scored as a causal LM (the causality audit rejects it), so it
competes on its own track, scored on the same words for every entry:
- training batches are the usual (B, T) windows of the train stream, masked by the harness:
  15% of positions are chosen; of those 80% become `[MASK]` (id V, outside the 10,000 words),
  10% a random word, 10% stay unchanged; targets hold the original word there and -100 elsewhere;
- scoring cuts the split into windows of 128 tokens and masks a fixed, seeded 15% of its positions
  (all replaced by `[MASK]`), the same positions for every entry. The score is the masked-token
  perplexity exp(mean NLL over the masked positions) and the top-1 accuracy there.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from harness.contract import Entry
from harness.scoring import OutputChecker, unpack_output

if TYPE_CHECKING:
    from harness.runner import TrainStream

MASK_FRACTION = 0.15
IGNORE = -100
EVAL_WINDOW = 128
EVAL_MASK_SEED = 20_141_014  # fixed: every entry is scored on the same masked positions


def mask_batch(inputs: torch.Tensor, generator: torch.Generator, mask_id: int,
               vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of (B, T) ids -> (masked inputs (B, T), targets (B, T) with -100 where unmasked)."""
    device = inputs.device
    shape = inputs.shape
    chosen = torch.rand(shape, generator=generator) < MASK_FRACTION
    roll = torch.rand(shape, generator=generator)
    random_words = torch.randint(0, vocab_size, shape, generator=generator)
    chosen, roll, random_words = chosen.to(device), roll.to(device), random_words.to(device)
    masked = inputs.clone()
    masked[chosen & (roll < 0.8)] = mask_id
    randomised = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[randomised] = random_words[randomised]
    targets = torch.where(chosen, inputs, torch.full_like(inputs, IGNORE))
    return masked, targets


class MaskedStream:
    """Wraps a train stream: each (B, T) window is masked afresh, from the run's seed."""

    def __init__(self, stream: TrainStream, mask_id: int, vocab_size: int, seed: int) -> None:
        self.stream = stream
        self.mask_id = mask_id
        self.vocab_size = vocab_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.stream)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for inputs, _ in self.stream:
            yield mask_batch(inputs, self.generator, self.mask_id, self.vocab_size)


@dataclass(frozen=True)
class MaskedScore:
    split: str
    tokens: int
    """Masked positions scored."""
    nll_sum: float
    correct: int

    @property
    def perplexity(self) -> float:
        try:
            return math.exp(self.nll_sum / self.tokens)
        except OverflowError:
            return math.inf

    @property
    def accuracy(self) -> float:
        return self.correct / self.tokens


def eval_masking(ids: torch.Tensor, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed masking of a split: (W, 128) masked inputs and targets (-100 where not scored).

    The last window is padded with `[MASK]`-free filler (id 0) that is never scored.
    """
    n = int(ids.numel())
    windows = math.ceil(n / EVAL_WINDOW)
    padded = torch.zeros(windows * EVAL_WINDOW, dtype=torch.long)
    padded[:n] = ids
    generator = torch.Generator().manual_seed(EVAL_MASK_SEED)
    chosen = torch.zeros(windows * EVAL_WINDOW, dtype=torch.bool)
    chosen[torch.randperm(n, generator=generator)[: round(MASK_FRACTION * n)]] = True
    inputs = torch.where(chosen, torch.full_like(padded, mask_id), padded)
    targets = torch.where(chosen, padded, torch.full_like(padded, IGNORE))
    return inputs.view(windows, EVAL_WINDOW), targets.view(windows, EVAL_WINDOW)


def score_masked(entry: Entry, ids: torch.Tensor, *, mask_id: int, vocab_size: int, device: torch.device,
                 normalisation_tol: float, split: str, batch_size: int) -> MaskedScore:
    """Masked-token NLL and accuracy over the fixed masking; call inside `scoring_mode(entry)`."""
    inputs, targets = eval_masking(ids, mask_id)
    check = OutputChecker(vocab_size, device, normalisation_tol)
    nll_sum, correct, tokens = 0.0, 0, 0
    for start in range(0, inputs.shape[0], batch_size):
        x = inputs[start:start + batch_size].to(device)
        y = targets[start:start + batch_size]
        log_probs, _ = unpack_output(entry.log_probs(x, entry.initial_state(x.shape[0])))
        check(log_probs, x.shape[0], x.shape[1])
        scored = y != IGNORE
        picked = log_probs[scored.to(log_probs.device)]  # (M, V)
        words = y[scored].to(log_probs.device)
        nll_sum += float(-picked.gather(1, words.unsqueeze(1)).double().sum())
        correct += int((picked.argmax(dim=1) == words).sum())
        tokens += int(scored.sum())
    if tokens != int((targets != IGNORE).sum()):
        raise RuntimeError(f"harness bug: {split} masked positions not all scored")
    return MaskedScore(split=split, tokens=tokens, nll_sum=nll_sum, correct=correct)
