"""The masked-LM track, on the supervisor's side (`track = "mlm"`): BERT-style masking for training and a fixed masking for scoring.

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
import torch

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
