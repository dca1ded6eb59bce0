"""The BERT model of the project's origin, trained and scored on the masked-LM track.

A small bidirectional Transformer encoder (Devlin et al. 2019): token and learned position
embeddings, layer norm, 2 encoder layers of width 128 with 2 heads (GELU feed-forward of 512,
pre-norm), dropout 0.1, and an output head tied to the token embedding. Trained with AdamW on the
harness's BERT masking (15% of positions; 80% [MASK], 10% random, 10% kept) over windows of 128
tokens. Scored by masked-token perplexity and top-1 accuracy on the harness's fixed masking of
valid and test. There is no published PTB masked-LM figure to reproduce; this is the track's
reference entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.contract import Entry, Hparams, SetupContext


@dataclass
class BertHparams(Hparams):
    batch_size: int = 32
    seq_len: int = 128
    d_model: int = 128
    heads: int = 2
    feedforward: int = 512
    layers: int = 2
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.01
    clip: float = 1.0


class Bert(nn.Module):
    def __init__(self, words: int, hp: BertHparams, max_length: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(words + 1, hp.d_model)  # + 1: the [MASK] id
        self.positions = nn.Embedding(max_length, hp.d_model)
        self.norm = nn.LayerNorm(hp.d_model)
        self.drop = nn.Dropout(hp.dropout)
        layer = nn.TransformerEncoderLayer(hp.d_model, hp.heads, hp.feedforward, hp.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, hp.layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(hp.d_model)
        self.bias = nn.Parameter(torch.zeros(words))
        self.words = words
        for embedding in (self.tokens, self.positions):
            nn.init.normal_(embedding.weight, std=0.02)  # BERT's initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        h = self.drop(self.norm(self.tokens(x) + self.positions(positions)))  # (B, T, D)
        h = self.final_norm(self.encoder(h))  # no mask: every position sees the whole window
        return h @ self.tokens.weight[: self.words].T + self.bias  # (B, T, V), tied output


class BertMlm(Entry):
    name = "bert_mlm"
    authors = "ptb-harness baselines (after Devlin et al. 2019)"
    description = "Small BERT encoder, 2 layers, width 128, masked-LM track."
    track = "mlm"
    Hparams = BertHparams

    def setup(self, ctx: SetupContext) -> None:
        self.model = Bert(ctx.vocab_size, self.hparams, max_length=max(self.hparams.seq_len, 128)).to(ctx.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.hparams.lr,
                                           weight_decay=self.hparams.weight_decay)

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.model(inputs)  # (B, T, V)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.hparams.clip)
        self.optimizer.step()
        return loss.detach()

    def log_probs(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return self.model(inputs).log_softmax(-1), state
