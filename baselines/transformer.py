"""The Transformer language model of the project's origin, made correct.

A small causal Transformer in the style of PyTorch's `word_language_model` example (Vaswani et
al. 2017 layers, post-norm): token embedding scaled by sqrt(d), sinusoidal positional encoding
added per position, 2 self-attention layers of width 128 with 2 heads and a 128-wide feed-forward
block, dropout 0.2, a linear head over the vocabulary, Adam at 1e-3. The original code lacked a
causal mask and mixed up batch and time axes; here the mask is causal and every tensor is
batch-first. It is stateless: each training window is read on its own, and for scoring the
harness gives each window of 64 scored positions 64 tokens of left context (`eval_context`).
No published PTB figure corresponds to this exact configuration; it is a reference point, not a
reproduction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.contract import Entry, Hparams, SetupContext


@dataclass
class TransformerHparams(Hparams):
    batch_size: int = 32
    seq_len: int = 128
    d_model: int = 128
    heads: int = 2
    feedforward: int = 128
    layers: int = 2
    dropout: float = 0.2
    lr: float = 1e-3
    clip: float = 0.5


def sinusoidal_encoding(length: int, width: int) -> torch.Tensor:
    """(length, width): sin on even features, cos on odd ones, wavelengths up to 10,000 * 2 pi."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10_000.0) / width))
    encoding = torch.zeros(length, width)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency)
    return encoding


class CausalTransformer(nn.Module):
    def __init__(self, vocab: int, hp: TransformerHparams, max_length: int) -> None:
        super().__init__()
        self.scale = math.sqrt(hp.d_model)
        self.embed = nn.Embedding(vocab, hp.d_model)
        self.register_buffer("positions", sinusoidal_encoding(max_length, hp.d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(hp.d_model, hp.heads, hp.feedforward, hp.dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, hp.layers, enable_nested_tensor=False)
        self.drop = nn.Dropout(hp.dropout)
        self.head = nn.Linear(hp.d_model, vocab)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        nn.init.uniform_(self.head.weight, -0.1, 0.1)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        h = self.drop(self.embed(x) * self.scale + self.positions[:length])  # (B, T, D), one encoding per position
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=x.device)  # (T, T), -inf above the diagonal
        h = self.encoder(h, mask=mask, is_causal=True)
        return self.head(h)  # (B, T, V)


class TransformerLm(Entry):
    name = "transformer"
    authors = "ptb-harness baselines (after PyTorch's word_language_model)"
    description = "2-layer causal Transformer, width 128, 2 heads, sinusoidal positions, Adam."
    Hparams = TransformerHparams
    eval_context = 64

    def setup(self, ctx: SetupContext) -> None:
        max_length = max(self.hparams.seq_len, self.eval_context + 64)
        self.model = CausalTransformer(ctx.vocab_size, self.hparams, max_length).to(ctx.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.hparams.lr)

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.model(inputs)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.hparams.clip)
        self.optimizer.step()
        return loss.detach()

    def log_probs(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return self.model(inputs).log_softmax(-1), state
