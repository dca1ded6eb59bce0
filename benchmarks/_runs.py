"""Real runs for the benchmarks: `execute_run` on a baseline with the PTB data, events timestamped."""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import REPO, corpus
from harness.budget import RunLimits
from harness.contract import Budget, SetupContext
from harness.execution import RunData, RunResult, RunSpec, execute_run, lean_supervisor
from harness.sandbox import resolve_confinement
from harness.scoring import EvalProtocol
from harness.sandboxed.loader import build_hparams, import_entry_class


def run_data() -> tuple[Any, RunData]:
    data = corpus()
    return data, RunData.from_corpus(data)


def harness_run(data: RunData, entry: str, hparams: dict[str, Any], seconds: float, evals: int,
                threads: int, protocol: EvalProtocol | None = None) -> tuple[RunResult, list[tuple[float, dict[str, Any]]]]:
    """One sandboxed run; returns its result and every event with the monotonic time it arrived."""
    source = (REPO / "baselines" / f"{entry}.py").read_text()
    spec = RunSpec(entry, source, hashlib.sha256(source.encode()).hexdigest(), "causal", hparams, 0, "cpu",
                   threads, RunLimits(seconds=seconds, memory_bytes=8 * 2**30, evals=evals),
                   protocol or EvalProtocol())
    events: list[tuple[float, dict[str, Any]]] = []
    bare_threads = torch.get_num_threads()
    lean_supervisor()  # as `harness run` does for its supervisor
    try:
        with tempfile.TemporaryDirectory(prefix="ptb-bench-") as work:
            result = execute_run(spec, data, resolve_confinement("bwrap"), Path(work) / "run",
                                 lambda event: events.append((time.monotonic(), event)))
    finally:
        torch.set_num_threads(bare_threads)  # the bare loop it is compared with keeps its threads
    events.append((time.monotonic(), {"type": "end"}))
    return result, events


def in_process_entry(corpus_data: Any, entry: str, hparams: dict[str, Any]) -> Any:
    """The same baseline built in this process, for the bare loops (benchmark only: never the harness)."""
    cls = import_entry_class(REPO / "baselines" / f"{entry}.py")
    model = cls()
    model.hparams = build_hparams(cls.Hparams, hparams)
    model.setup(SetupContext(corpus_data.vocab_size, corpus_data.vocab, corpus_data.eos_id, torch.device("cpu"), 0,
                             Budget(600, 2**33), model.hparams, 1, 1))
    return model
