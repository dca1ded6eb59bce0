"""The submission contract: the one file a participant needs to read.

A submission is one Python module (in `submissions/`, or any path) that defines exactly one
subclass of `Entry`. The harness owns everything else: the data, the order of the batches, the
clock, the evaluation protocol and the checks. Baselines in `baselines/` use exactly this contract.

How the harness drives an entry: two sandboxed processes, one supervisor
--------------------------------------------------------------------------

Your module is imported in two processes, each in its own sandbox, and neither is trusted: the
supervisor (the harness's parent process) owns the clock, the data, the scoring and every check.

    TRAINER (holds your entry; sees only the training batches it is handed)
        entry = YourEntry(); entry.hparams = YourHparams(**overrides); entry.setup(ctx)
        on_epoch_start(0); loss = train_step(inputs, targets); ...        batches from the supervisor
        every 1/evals of the budget, between two steps, on the supervisor's clock:
            prepare_for_eval(); state_dict() -> checkpoint; resume_training()
            (the trainer is then frozen, not one instruction runs, while the scorer scores valid)
            on_validation(info)                                 info: ValidationInfo (a float: the ppl)
        at the end (budget, max_steps or max_epochs): on_train_end(); prepare_for_eval();
            state_dict() -> final checkpoint; the trainer is then ended

    SCORER (a fresh process; holds your entry, never any split)
        entry = YourEntry(); entry.hparams = ...; entry.setup(ctx); entry.load_state_dict(checkpoint)
        answers log_probs(inputs, state) for windows the supervisor builds; it never sees a target
        (on the mlm track it sees only masked inputs), and the test split only once the trainer is gone

The supervisor reads the full log-prob rows back, renormalises them and computes the score
itself. Its causality audits and replay probes copy scored windows (audits change the inputs
after a random position) and go to the other scorer process at random points; the audited rows
are drawn across every scored position. A model that peeks in some windows is caught on those
windows, so it must simply be causal, score each row from its own inputs and state alone, and
leave its weights alone while scoring.

What is timed: wall-clock time from the start of the trainer (importing your module, `setup`,
every `train_step`, the hooks, writing checkpoints) to the final checkpoint, measured by the
supervisor. The clock pauses only while the trainer is frozen for a validation pass. Once the
budget is spent the trainer is handed no more batches; a trainer that has not written its final
checkpoint by budget plus a grace period (10% of the budget, 2 to 10 s) is killed (`timeout`).
`ctx.clock` tells you the elapsed and remaining training seconds on that clock.

Checkpoints: `state_dict()` by default holds every module, tensor, numpy array and optimiser your
entry keeps in its attributes (looked for through lists, tuples, dicts and plain objects), except
attributes whose name starts with `_` (scratch: carried hidden state, a copy of the best weights);
`load_state_dict()` puts them back into the entry the scorer built with `setup`. An entry whose
scored state is built during training in other objects (an n-gram table, say) overrides both.
State must be tensors, numpy arrays, numbers, strings and lists, tuples and dicts of them.

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
than `seq_len`. Every epoch replays the same stream in the same order. An entry may choose the
length of each window (variable BPTT, as AWD-LSTM does) with `next_seq_len()`; the stream still
continues exactly where the previous window stopped, and steps and tokens are counted by the
supervisor from what it handed out.

Scoring (what `log_probs` is for)
---------------------------------
Perplexity = exp(mean negative log-likelihood) over every token of the split; each token is
scored exactly once, the first from an `<eos>` context. The harness cuts the split into segments
of whole sentences (about 2,048 tokens each), starts each segment from `initial_state`, and feeds
it in windows, several segments side by side in a batch (`ctx.eval_segment_tokens` = 2,048,
`ctx.eval_batch_size` = 16 segments, `ctx.eval_window` = W = 64 scored positions per call):

    segment:  <eos> the cat sat <eos> a dog ...        inputs, fed window by window
    targets:  the   cat sat <eos> a   dog ...          every one scored once

    log_probs(inputs (B, C + W), state) -> (log-probs (B, C + W, V), new state)

Only the last W positions of each call are scored. C is your `eval_context` (default 0): a
stateless model (a Transformer, an n-gram) sets it to the number of earlier tokens it wants to
see, and the harness prepends that many tokens of left context (`<eos>` before a segment's
start). A stateful model keeps C = 0 and carries `state` between calls. The result does not
depend on how many segments share a batch.

Every scored run is checked by the supervisor, on the rows it receives; a failed check makes it
`invalid` and keeps it off the board:
- log-probs have shape (B, C + W, V), a floating dtype, and are finite;
- they are normalised: logsumexp over the V words is 0 (within 1e-3) at every position. The NLL
  is computed from renormalised rows (lp[target] - logsumexp(lp)), so the tolerance buys nothing;
- causality: changing later inputs never changes earlier log-probs (audited from outside, on
  rows of scored windows drawn across every position, each replayed from a fresh state among
  other rows: a row's log-probs may not depend on the other rows of its batch either);
- replay: windows already scored, sent again from a fresh state at random points (the last
  request of every pass among them), must give the same rows: weights must not change while
  scoring (no training in a background thread). The scorer calls `log_probs` under
  `torch.inference_mode()` with your modules in eval mode.
C may be a class attribute or set in `setup` (`self.eval_context = 35`); an entry may also ask for
a shorter scoring window with `eval_window` (1 to 64). The score does not depend on either.

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


class Clock:
    """The harness's training clock as the trainer last heard it (the supervisor enforces the budget;
    this is for schedules). Updated with every batch."""

    def __init__(self, budget_seconds: float) -> None:
        self.budget_seconds = budget_seconds
        self.elapsed = 0.0
        """Training seconds spent so far on the supervisor's clock."""

    @property
    def remaining(self) -> float:
        return max(0.0, self.budget_seconds - self.elapsed)

    @property
    def fraction(self) -> float:
        """elapsed / budget, in [0, 1]: handy for a time-based learning-rate schedule."""
        return min(1.0, self.elapsed / self.budget_seconds) if self.budget_seconds else 1.0


class ValidationInfo(float):
    """What `on_validation` receives: a float (the validation perplexity) with the schedule attached."""

    pass_index: int
    """0-based index of this pass."""
    passes: int
    """Validation passes planned during training (the cadence); the final scoring is not one of them."""
    step: int
    tokens: int
    train_seconds: float
    last: bool
    """True for the last pass the cadence plans."""

    def __new__(cls, perplexity: float, **schedule: Any) -> ValidationInfo:
        info = super().__new__(cls, perplexity)
        for key, value in schedule.items():
            setattr(info, key, value)
        return info

    @property
    def perplexity(self) -> float:
        return float(self)


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
    """How many `train_step` calls make one pass over the train split (at `seq_len`)."""
    train_tokens: int
    """Tokens in the train split (targets per epoch)."""
    mask_id: int | None = None
    """The `[MASK]` id on the mlm track (= vocab_size); None on the causal track."""
    clock: Clock | None = None
    """Elapsed and remaining training seconds on the harness's clock (None in the scorer)."""
    evals: int = 0
    """Validation passes the cadence plans during training."""
    eval_window: int = 64
    """W: scored positions per `log_probs` call."""
    eval_segment_tokens: int = 2048
    """A scoring segment (read from a fresh `initial_state`) is about this many tokens of whole sentences."""
    eval_batch_size: int = 16
    """Segments scored side by side."""
    role: str = "trainer"
    """`trainer` or `scorer`: which of the two processes this is."""


class Entry:
    """Subclass this once in your module. Override `setup`, `train_step` and `log_probs`.

    Keep your model in attributes of the entry (`self.model = ...`): the default `state_dict`
    finds every module, tensor, array and optimiser there (also inside lists, dicts and objects).
    """

    name: ClassVar[str] = ""
    """Leaderboard name; defaults to the module's file name. Read from the source, as a literal."""
    authors: ClassVar[str] = ""
    description: ClassVar[str] = ""
    track: ClassVar[str] = "causal"
    """The competition track: `causal` (next-word prediction) or `mlm` (masked words). A literal."""
    Hparams: ClassVar[type[Hparams]] = Hparams
    """Your hyper-parameter dataclass (a subclass of `harness.contract.Hparams`)."""
    eval_context: int = 0
    """C: earlier tokens prepended to each scoring window (stateless models). May be set in setup."""
    eval_window: int = 64
    """W: scored positions per scoring call, 1 to 64 (a Transformer trained on 35 positions may ask for 35)."""
    validate_every_epoch: ClassVar[bool] = False
    """True: a validation pass at the end of every epoch but the last (at most 100), instead of the
    competition's cadence on the clock; frozen, untimed passes all the same."""

    hparams: Hparams
    """Set by the harness before `setup`: the defaults with the command line's overrides."""

    def setup(self, ctx: SetupContext) -> None:
        """Build the model and optimiser on `ctx.device`. Timed in the trainer; also run in the scorer."""
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

    def next_seq_len(self) -> int | None:
        """Length T of the next training window, or None for `hparams.seq_len` (variable BPTT)."""
        return None

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of each epoch (0-based). Timed."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after the last step of each epoch; e.g. a learning-rate schedule. Timed."""

    def on_validation(self, info: ValidationInfo) -> None:
        """Called after each validation pass during training with its perplexity (a float) and the
        schedule (`info.pass_index`, `info.passes`, `info.step`, `info.tokens`, `info.train_seconds`,
        `info.last`); e.g. reduce-on-plateau, NT-ASGD's trigger, or keeping the best weights."""

    def prepare_for_eval(self) -> None:
        """Called in the trainer just before each checkpoint (validation passes and the final one):
        put the weights you want scored in place (averaged ASGD/EMA weights, the best so far)."""

    def resume_training(self) -> None:
        """Called after a validation checkpoint is written: restore your training weights if
        `prepare_for_eval` swapped them out."""

    def on_train_end(self) -> None:
        """Called once after the last step, whatever stopped training, before the final checkpoint."""

    def state_dict(self) -> Any:
        """What a checkpoint holds. Default: every module, tensor, array and optimiser of the entry."""
        from harness.sandboxed.state import default_state_dict

        return default_state_dict(self)

    def load_state_dict(self, state: Any) -> None:
        """Load a checkpoint into an entry that `setup` has built. Default: the inverse of `state_dict`."""
        from harness.sandboxed.state import default_load_state_dict

        default_load_state_dict(self, state)
