"""A realistic results database made up on the spot: many entries, seeds, failures, curves."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from harness.errors import RunStatus
from harness.store import CurvePoint, Run, Store

SENTENCES = 3761  # test sentences of PTB
FAILURES = [("failed", "runtime_error", "train_step (step 12) raised ValueError: shapes do not match"),
            ("timeout", "timeout", "training ran 612.0 s, past the 600 s budget plus 10 s grace"),
            ("out_of_memory", "out_of_memory", "memory reached 8.1 GiB, over the 8.0 GiB budget"),
            ("invalid", "causality_violation", "causality check failed: changing the inputs after position 3")]


def synthetic_database(path: Path, entries: int = 200, runs_per_entry: int = 10, seed: int = 0) -> Store:
    """`entries` entries with `runs_per_entry` runs each (one in ten failing), in one transaction."""
    rng = np.random.default_rng(seed)
    store = Store(path)
    base = rng.gamma(4.0, 30.0, SENTENCES)  # per-sentence NLL of a typical model
    start = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    with store.session() as session:
        for e in range(entries):
            quality = rng.uniform(0.7, 1.3)
            name = f"entry_{e:03d}"
            for r in range(runs_per_entry):
                started = start + dt.timedelta(hours=e * runs_per_entry + r)
                run = Run(entry=name, entry_kind="submission", entry_path=f"/s/{name}.py", source_hash=f"{e:064x}",
                          source=f"# entry {e}\n" * 40, display_name=name, authors=f"Team {e % 37}",
                          description=f"Model {e}: an LSTM variant", track="mlm" if e % 20 == 0 else "causal",
                          hparams={"lr": 0.001 * (1 + e % 5)}, hparam_overrides={}, seed=r, device="cpu",
                          division="cpu", budget_seconds=600.0, memory_limit_bytes=8 * 2**30, eval_protocol={},
                          data_checksums={}, harness_version="0.1.0", config={"options": {"evals": 10}}, started_at=started,
                          ended_at=started + dt.timedelta(minutes=11), run_key=f"{e}-{r}")
                if r == runs_per_entry - 1 and e % 10 == 3:
                    status, failure, reason = FAILURES[e % len(FAILURES)]
                    run.status, run.failure, run.reason = status, failure, reason
                    run.traceback = "Traceback (most recent call last):\n  ...\nValueError: boom"
                else:
                    sentences = base * quality + rng.normal(0, 2.0, SENTENCES)
                    ppl = float(np.exp(sentences.sum() / 82_430))
                    run.status = RunStatus.OK.value
                    run.test_ppl, run.valid_ppl = ppl, ppl * 1.07
                    run.test_tokens, run.valid_tokens = 82_430, 73_760
                    run.test_sentence_nll = sentences.astype("<f4").tobytes()
                    run.valid_sentence_nll = sentences.astype("<f4").tobytes()
                    run.param_count = int(rng.integers(1e5, 3e7))
                    run.tokens_trained, run.train_seconds = int(rng.integers(1e6, 1e7)), 600.0
                    run.peak_memory_bytes, run.steps = int(rng.integers(5e8, 6e9)), 3000
                    run.curve = [CurvePoint(train_seconds=60.0 * k, steps=300 * k, tokens=120_000 * k,
                                            valid_ppl=ppl * (1 + 2.0 / k)) for k in range(1, 11)]
                session.add(run)
    return store
