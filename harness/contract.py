"""The submission contract: the one file a participant needs to read.

A submission is one Python module (in `submissions/`, or any path) that defines exactly one
subclass of `Entry`. The harness owns everything else: the data, the order of the batches, the
clock, the evaluation protocol and the checks. Baselines in `baselines/` use exactly this contract.

How the harness drives an entry (in its own child process)
-----------------------------------------------------------

    entry = YourEntry()                       # no arguments
    entry.hparams = YourHparams(**overrides)  # defaults, then `--hparam key=value` overrides
    entry.setup(ctx)                          # build the model and optimiser here
    for epoch in 0, 1, ...:                   # until the budget, max_epochs or max_steps
        entry.on_epoch_start(epoch)
        for inputs, targets in train stream:
            loss = entry.train_step(inputs, targets)
            (every 1/evals of the budget: a validation pass, untimed, then on_validation(ppl))
        entry.on_epoch_end(epoch)
    final validation pass, causality audit, then the test split: untimed, capped, frozen weights

What is timed: wall-clock time from importing your module to the return of the last step: the
import, `setup`, every `train_step`, the hooks, and the harness's own (thin) loop between them. The
clock pauses only during validation passes. The harness stops calling `train_step` once the budget
is spent; a step that never returns is killed at budget plus a grace period (run: `timeout`).

The training stream
-------------------
The train split is one token stream, `<eos>` after every sentence, with one `<eos>` put in front
so that the first word is a target too. It is cut into `batch_size` rows of equal length; each
step takes the next `seq_len` columns:

    row 0:  <eos> w1  w2  w3 | w4  w5  w6 | ...      inputs  (B, T) int64, on ctx.device
    row 1:  w900  w901 ...   | ...                    targets (B, T) = inputs shifted left by one
            `-- step 0 ---'   `-- step 1 --'

Row b of step k+1 continues exactly where row b of step k stopped, so a stateful model may carry
its hidden state from one step to the next (detach it!). The last step of an epoch may be shorter
than `seq_len`. Every epoch replays the same stream in the same order.

Scoring (what `log_probs` is for)
---------------------------------
Perplexity = exp(mean negative log-likelihood) over every token of the split; each token is
scored exactly once, the first from an `<eos>` context. The harness cuts the split into segments
of whole sentences (about 2,048 tokens each), starts each segment from `initial_state`, and feeds
it in windows, several segments side by side in a batch:

    segment:  <eos> the cat sat <eos> a dog ...        inputs, fed window by window
    targets:  the   cat sat <eos> a   dog ...          every one scored once

    log_probs(inputs (B, C + W), state) -> (log-probs (B, C + W, V), new state)

Only the last W positions of each call are scored. C is your `eval_context` (default 0): a
stateless model (a Transformer, an n-gram) sets it to the number of earlier tokens it wants to
see, and the harness prepends that many tokens of left context (`<eos>` before a segment's
start). A stateful model keeps C = 0 and carries `state` between calls. The result does not
depend on how many segments share a batch.

Every scored run is checked; a failed check makes it `invalid` and keeps it off the board:
- log-probs have shape (B, C + W, V), a floating dtype, and are finite;
- they are normalised: logsumexp over the V words is 0 (within 1e-3) at every position;
- causality: changing later inputs never changes earlier log-probs (audited on random windows);
- your weights (every tensor and module held in the entry's attributes) do not change while
  scoring. The harness scores under `torch.inference_mode()` with your modules in eval mode.

The masked-LM track (`track = "mlm"`)
-------------------------------------
A bidirectional model (BERT) competes on its own track. `ctx.mask_id` (= V, outside the words) is
the `[MASK]` id, so its embedding needs V + 1 rows. Training batches are masked by the harness:

    train_step(inputs (B, T): 15% of positions chosen; 80% -> [MASK], 10% random, 10% kept,
               targets (B, T): the original word where chosen, -100 elsewhere)

Scoring masks a fixed, seeded 15% of each split's positions with `[MASK]` (the same positions for
every entry), in windows of 128 tokens; `log_probs(inputs (B, 128), state) -> (B, 128, V)`. The
score is the masked-token perplexity and top-1 accuracy over those positions. The shape, finite,
normalised and frozen-weights checks apply; causality does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch


@dataclass
class Hparams:
    """Hyper-parameters every entry has. Subclass it (as a dataclass) to add your own.

    Every field can be overridden from the command line: `--hparam lr=0.002`. Fields must be
    int, float, bool or str (optionally `| None`) so that the harness can parse them.
    """

    batch_size: int = 20
    """B: rows of the training stream per step."""
    seq_len: int = 35
    """T: tokens per row per step (truncated back-propagation length)."""
    max_epochs: int | None = None
    """Stop after this many passes over train (count-based models use 1). None: no limit."""
    max_steps: int | None = None
    """Stop after this many `train_step` calls. None: no limit."""


@dataclass(frozen=True)
class Budget:
    """What a run may spend. Enforced by the harness, not trusted to the entry."""

    seconds: float
    """Training time (see "What is timed" above)."""
    memory_bytes: int
    """Peak resident memory of the run's processes (on CUDA: peak GPU memory allocated)."""


@dataclass(frozen=True)
class SetupContext:
    """Everything `setup` may use."""

    vocab_size: int
    """V: 10,000 for PTB. Token ids are 0 .. V-1."""
    vocab: tuple[str, ...]
    """The words, indexed by id (most frequent first)."""
    eos_id: int
    """Id of `<eos>`, the end-of-sentence token."""
    device: torch.device
    """Where inputs arrive and where your model should live."""
    seed: int
    """The run's seed; the harness has already seeded `random`, numpy and torch with it."""
    budget: Budget
    hparams: Hparams
    steps_per_epoch: int
    """How many `train_step` calls make one pass over the train split."""
    train_tokens: int
    """Tokens in the train split (targets per epoch)."""
    mask_id: int | None = None
    """The `[MASK]` id on the mlm track (= vocab_size); None on the causal track."""


class Entry:
    """Subclass this once in your module. Override `setup`, `train_step` and `log_probs`.

    Keep your model in attributes of the entry (`self.model = ...`): the harness finds every
    `torch.nn.Module` and tensor there to count parameters, switch eval mode and hash weights.
    """

    name: ClassVar[str] = ""
    """Leaderboard name; defaults to the module's file name."""
    authors: ClassVar[str] = ""
    description: ClassVar[str] = ""
    track: ClassVar[str] = "causal"
    """The competition track: `causal` (next-word prediction) or `mlm` (masked words)."""
    Hparams: ClassVar[type[Hparams]] = Hparams
    """Your hyper-parameter dataclass (a subclass of `harness.contract.Hparams`)."""
    eval_context: ClassVar[int] = 0
    """C: earlier tokens prepended to each scoring window (stateless models)."""

    hparams: Hparams
    """Set by the harness before `setup`: the defaults with the command line's overrides."""

    def setup(self, ctx: SetupContext) -> None:
        """Build the model and optimiser on `ctx.device`. Timed."""
        raise NotImplementedError("define setup(self, ctx) in your entry")

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | float:
        """One optimisation step on inputs, targets: (B, T) int64. Return the mean training loss
        (nats per token) as a float or a 0-dim tensor; a NaN or infinite loss ends the run."""
        raise NotImplementedError("define train_step(self, inputs, targets) in your entry")

    def log_probs(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Next-token log-probabilities. inputs: (B, C + W) int64 -> ((B, C + W, V) float, state).

        Position t may depend on inputs[:, :t+1] and on `state` only. Called under
        `torch.inference_mode()` with your modules in eval mode; must not change any weights."""
        raise NotImplementedError("define log_probs(self, inputs, state) in your entry")

    def initial_state(self, batch_size: int) -> Any:
        """The state a fresh segment of `batch_size` rows starts from (None if stateless)."""
        return None

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of each epoch (0-based). Timed."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after the last step of each epoch; e.g. a learning-rate schedule. Timed."""

    def on_validation(self, valid_perplexity: float) -> None:
        """Called after each validation pass during training; e.g. reduce-on-plateau."""
