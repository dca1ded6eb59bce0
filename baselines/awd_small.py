"""awd_small: an AWD-LSTM (Merity, Keskar and Socher 2018, "Regularizing and Optimizing LSTM Language
Models") sized for the default CPU division: 600 s of training on 2 cores.

From the paper, each part written against this contract:
- a weight-dropped LSTM: DropConnect on every layer's hidden-to-hidden matrix, one mask per step
  (the LSTM runs on the dropped matrix through `torch.func.functional_call`);
- embedding dropout (whole words dropped from the embedding matrix) and locked (variational)
  dropout on the embedding output, between the layers and on the last layer's output;
- tied input and output weights;
- activation regularisation (AR, on the dropped last-layer output) and temporal activation
  regularisation (TAR, on the undropped one);
- variable-length BPTT: each window's length is drawn from N(seq_len, 5), and from N(seq_len / 2, 5)
  with probability 0.05 (`next_seq_len`), with the learning rate scaled by the window's length;
- NT-ASGD: plain SGD until validation perplexity stops improving on the best of the passes more than
  `nonmono` passes before (non-monotone trigger), then the iterates are averaged and the averaged
  weights are the ones validated and scored (`prepare_for_eval` / `resume_training`);
- the best weights seen on validation are kept and scored (`on_train_end`).

What changes for 600 s on a CPU (AWD-LSTM's own recipe trains 3 x 1150 units for 500 epochs on a GPU):
- 2 layers of 256 units and an adaptive softmax over the frequency-sorted vocabulary (Grave et al.
  2017), tied to an adaptive input embedding (Baevski and Auli 2019): the 2,000 commonest words get
  full 256-wide rows shared by the input and the softmax head, the two tail clusters 64- and 16-wide
  rows with one projection each, also shared. On a CPU the 10,000-way output is most of a step;
- light dropout (0.1 where the paper has 0.1 to 0.65) and AR 1: the budget allows under 6 epochs,
  not 500, and the first version with rates near half the paper's ended 15 points worse (test 122.7);
- lstm_sprint's schedule on the harness's clock (ctx.clock): the learning rate halves every 10% of
  the budget after 40% of it;
- averaging starts at NT-ASGD's trigger or at `asgd_by` (70%) of the budget, whichever comes first:
  averaging late iterates is what turns the last part of the budget into perplexity.
Its figures on the reference machine are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from harness.contract import Entry, Hparams, SetupContext, ValidationInfo


@dataclass
class AwdHparams(Hparams):
    batch_size: int = 32
    seq_len: int = 35
    """Mean BPTT length; each window's length is drawn around it."""
    bptt_std: float = 5.0
    hidden: int = 256
    layers: int = 2
    cutoff_head: int = 2000
    cutoff_mid: int = 6000
    tail_dims: tuple[int, ...] = (64, 16)
    """Width of the tied rows of the two tail clusters."""
    dropout_out: float = 0.1
    """Locked dropout on the last layer's output."""
    dropout_layers: float = 0.1
    """Locked dropout between the LSTM layers."""
    dropout_in: float = 0.1
    """Locked dropout on the embedding output."""
    dropout_words: float = 0.02
    """Embedding dropout: whole words removed for a step."""
    weight_drop: float = 0.1
    """DropConnect on the hidden-to-hidden matrices."""
    alpha: float = 1.0
    """AR: penalty on the size of the (dropped) last-layer activations."""
    beta: float = 1.0
    """TAR: penalty on their change from one position to the next."""
    lr: float = 1.0
    """SGD learning rate on the loss summed over the window (AWD's 30 on the mean, at length 35)."""
    clip: float = 0.25
    init_scale: float = 0.1
    decay_start: float = 0.4
    """Fraction of the budget after which the learning rate halves every `halve_every` (on ctx.clock)."""
    halve_every: float = 0.1
    nonmono: int = 2
    """NT-ASGD: trigger when validation is worse than the best of the passes before the last `nonmono`."""
    asgd_by: float = 0.7
    """Fraction of the budget after which averaging starts even if validation has not stalled."""
    budget_margin: float = 0.97


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Variational dropout: one mask per sequence, the same at every position. x: (B, T, H)."""
    if not training or p == 0.0:
        return x
    mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - p) / (1 - p)  # (B, 1, H)
    return x * mask


class TiedAdaptive(nn.Module):
    """Adaptive input embedding and adaptive softmax sharing their weights, cluster by cluster.

    Words are numbered most frequent first. Cluster 0 (the head, ids < cutoffs[0]) has full-width
    rows; tail cluster i has rows of width dims[i] and a projection up to the model's width. A word's
    input vector is its row (projected up); its output logit is the hidden vector projected down
    through the same matrix, dotted with the same row."""

    def __init__(self, vocab: int, width: int, cutoffs: list[int], dims: tuple[int, ...]) -> None:
        super().__init__()
        self.bounds = [0, *cutoffs, vocab]
        self.head = nn.Parameter(torch.empty(cutoffs[0], width))  # (head words, H)
        self.tails = nn.ParameterList(
            nn.Parameter(torch.empty(self.bounds[i + 2] - self.bounds[i + 1], d)) for i, d in enumerate(dims))
        self.projections = nn.ParameterList(nn.Parameter(torch.empty(d, width)) for d in dims)  # (d_i, H)
        self.cluster_logits = nn.Linear(width, len(dims))  # the head's entries for "a word of tail i"
        self.head_bias = nn.Parameter(torch.zeros(cutoffs[0]))
        self.tail_biases = nn.ParameterList(nn.Parameter(torch.zeros(t.shape[0])) for t in self.tails)

    def embed(self, ids: torch.Tensor, drop_words: float, training: bool) -> torch.Tensor:
        """(B, T) int64 -> (B, T, H). Embedding dropout removes whole words (rows) for this call."""
        out = ids.new_zeros(*ids.shape, self.head.shape[1], dtype=self.head.dtype)
        for cluster in range(len(self.bounds) - 1):
            low, high = self.bounds[cluster], self.bounds[cluster + 1]
            where = (ids >= low) & (ids < high)
            if not where.any():
                continue
            rows = self.head if cluster == 0 else self.tails[cluster - 1]
            if training and drop_words > 0:
                keep = rows.new_empty(rows.shape[0], 1).bernoulli_(1 - drop_words) / (1 - drop_words)
                rows = rows * keep
            picked = rows[ids[where] - low]  # (N, d)
            out[where] = picked if cluster == 0 else picked @ self.projections[cluster - 1]
        return out

    def _head_log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """(N, H) -> (N, head words + tail clusters) log-probs of the head's choices."""
        logits = torch.cat([F.linear(h, self.head, self.head_bias), self.cluster_logits(h)], dim=-1)
        return F.log_softmax(logits, dim=-1)

    def _tail_log_probs(self, h: torch.Tensor, tail: int) -> torch.Tensor:
        """(N, H) -> (N, words of tail cluster `tail`), within the cluster."""
        down = h @ self.projections[tail].t()  # (N, d_i)
        return F.log_softmax(F.linear(down, self.tails[tail], self.tail_biases[tail]), dim=-1)

    def nll(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean NLL of targets (N,) under hidden vectors (N, H); each tail only for its own words."""
        head = self._head_log_probs(h)  # (N, head + clusters)
        head_words = self.bounds[1]
        in_head = targets < head_words
        picked = head.new_empty(targets.shape[0])
        picked[in_head] = head[in_head].gather(1, targets[in_head].unsqueeze(1)).squeeze(1)
        for tail in range(len(self.tails)):
            low, high = self.bounds[tail + 1], self.bounds[tail + 2]
            where = (targets >= low) & (targets < high)
            if where.any():
                within = self._tail_log_probs(h[where], tail).gather(1, (targets[where] - low).unsqueeze(1)).squeeze(1)
                picked[where] = head[where, head_words + tail] + within
        return -picked.mean()

    def log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """The full normalised distribution: (N, H) -> (N, V)."""
        head = self._head_log_probs(h)
        head_words = self.bounds[1]
        parts = [head[:, :head_words]]
        for tail in range(len(self.tails)):
            parts.append(head[:, head_words + tail:head_words + tail + 1] + self._tail_log_probs(h, tail))
        return torch.cat(parts, dim=-1)


class AwdLstm(nn.Module):
    def __init__(self, vocab: int, hp: AwdHparams) -> None:
        super().__init__()
        self.hp = hp
        self.words = TiedAdaptive(vocab, hp.hidden, [hp.cutoff_head, hp.cutoff_mid], tuple(hp.tail_dims))
        self.rnns = nn.ModuleList(nn.LSTM(hp.hidden, hp.hidden, 1, batch_first=True) for _ in range(hp.layers))
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -hp.init_scale, hp.init_scale)

    def forward(self, x: torch.Tensor, state: list[Any] | None) -> tuple[torch.Tensor, torch.Tensor, list[Any]]:
        """x: (B, T) -> (dropped output (B, T, H), raw last-layer output (B, T, H), new state per layer)."""
        hp, training = self.hp, self.training
        h = locked_dropout(self.words.embed(x, hp.dropout_words, training), hp.dropout_in, training)
        new_state = []
        raw = h
        for layer, rnn in enumerate(self.rnns):
            layer_state = state[layer] if state is not None else None
            if training and hp.weight_drop > 0:  # DropConnect on W_hh, one mask for the whole window
                dropped = F.dropout(rnn.weight_hh_l0, hp.weight_drop, training=True)
                raw, layer_state = functional_call(rnn, {"weight_hh_l0": dropped}, (h, layer_state))
            else:
                raw, layer_state = rnn(h, layer_state)
            new_state.append(layer_state)
            last = layer == len(self.rnns) - 1
            h = locked_dropout(raw, hp.dropout_out if last else hp.dropout_layers, training)
        return h, raw, new_state


class AwdSmall(Entry):
    name = "awd_small"
    authors = "ptb-harness baselines"
    description = ("AWD-LSTM for 600 s on 2 CPU cores: weight-dropped 2x256 LSTM, locked and embedding "
                   "dropout, tied adaptive input/softmax, AR/TAR, variable BPTT, NT-ASGD averaged weights.")
    Hparams = AwdHparams

    def setup(self, ctx: SetupContext) -> None:
        self.model = AwdLstm(ctx.vocab_size, self.hparams).to(ctx.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.hparams.lr)
        self.averaged: list[torch.Tensor] | None = None  # NT-ASGD's running mean once triggered
        self.averaged_steps = 0
        self._clock = ctx.clock
        self._budget = ctx.budget.seconds * self.hparams.budget_margin
        self._train_state: list[Any] | None = None
        self._training_weights: list[torch.Tensor] | None = None
        self._history: list[float] = []
        self._best: tuple[float, dict[str, torch.Tensor]] | None = None
        self._rng = random.Random(ctx.seed)

    # --- training ---------------------------------------------------------------------------------

    def next_seq_len(self) -> int:
        hp = self.hparams
        mean = hp.seq_len if self._rng.random() < 0.95 else hp.seq_len / 2
        return max(5, min(int(round(self._rng.gauss(mean, hp.bptt_std))), hp.seq_len + 3 * int(hp.bptt_std)))

    def on_epoch_start(self, epoch: int) -> None:
        self._train_state = None

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        self.model.train()
        self._maybe_trigger_by_time()
        for group in self.optimizer.param_groups:
            group["lr"] = self._learning_rate()
        out, raw, state = self.model(inputs, self._train_state)  # (B, T, H) each
        self._train_state = [tuple(s.detach() for s in layer) for layer in state]
        loss = self.model.words.nll(out.flatten(0, 1), targets.flatten())  # mean NLL per token
        penalty = hp.alpha * out.pow(2).mean() + hp.beta * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()
        self.optimizer.zero_grad()
        ((loss + penalty) * inputs.shape[1]).backward()  # summed over the window: lr scales with its length
        nn.utils.clip_grad_norm_(self.model.parameters(), hp.clip * inputs.shape[1])
        self.optimizer.step()
        if self.averaged is not None:
            self._accumulate()
        return loss.detach()

    def _learning_rate(self) -> float:
        hp = self.hparams
        used = (self._clock.elapsed if self._clock else 0.0) / self._budget
        return hp.lr * 0.5 ** int(max(0.0, (used - hp.decay_start) / hp.halve_every))

    def _maybe_trigger_by_time(self) -> None:
        if self.averaged is None and self._clock is not None and self._clock.elapsed >= self.hparams.asgd_by * self._budget:
            self._start_averaging()

    def _start_averaging(self) -> None:
        self.averaged = [p.detach().clone() for p in self.model.parameters()]
        self.averaged_steps = 1

    def _accumulate(self) -> None:
        """Running mean of the iterates since the trigger (ASGD's averaged weights)."""
        self.averaged_steps += 1
        torch._foreach_lerp_(self.averaged, [p.detach() for p in self.model.parameters()], 1.0 / self.averaged_steps)

    # --- validation, scoring ------------------------------------------------------------------------

    def prepare_for_eval(self) -> None:
        """Validate and score the averaged weights once averaging has started."""
        if self.averaged is not None and self._training_weights is None:
            self._training_weights = [p.detach().clone() for p in self.model.parameters()]
            with torch.no_grad():
                for p, mean in zip(self.model.parameters(), self.averaged):
                    p.copy_(mean)

    def resume_training(self) -> None:
        if self._training_weights is not None:
            with torch.no_grad():
                for p, kept in zip(self.model.parameters(), self._training_weights):
                    p.copy_(kept)
            self._training_weights = None

    def on_validation(self, info: ValidationInfo) -> None:
        """Keep the best weights validated (the averaged ones once averaging runs); NT-ASGD's trigger."""
        if self._best is None or info < self._best[0]:
            weights = self.averaged if self.averaged is not None else list(self.model.parameters())
            self._best = (float(info), {str(i): w.detach().clone() for i, w in enumerate(weights)})
        n = self.hparams.nonmono
        if self.averaged is None and len(self._history) > n and float(info) > min(self._history[:-n]):
            self._start_averaging()
        self._history.append(float(info))

    def on_train_end(self) -> None:
        """Score the final averaged weights while the average was still improving at the last pass
        (it has averaged more iterates since); otherwise the best weights validated."""
        if self._best is None:
            return
        if self.averaged is not None and self._history[-1] <= self._best[0]:
            return  # prepare_for_eval puts the final average in place
        with torch.no_grad():
            for i, p in enumerate(self.model.parameters()):
                p.copy_(self._best[1][str(i)])
        self.averaged = None  # prepare_for_eval must not swap the best weights out again

    def log_probs(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        out, _, state = self.model(inputs, state)  # eval mode: no dropout
        batch, length, width = out.shape
        return self.model.words.log_probs(out.reshape(-1, width)).view(batch, length, -1), state
