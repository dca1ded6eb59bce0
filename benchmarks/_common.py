"""Shared pieces of the benchmarks: the model they time and the data they feed it."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from harness.data import DataSource, load_corpus

REPO = Path(__file__).resolve().parent.parent


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")


def corpus():
    data_dir = os.environ.get("HARNESS_DATA_DIR") or REPO.parent / "shared" / "data" / "ptb"
    return load_corpus(DataSource.from_options(data_dir))


def alternate(first: Callable[[], float], second: Callable[[], float], rounds: int) -> tuple[float, float]:
    """Run two measurements in turn `rounds` times each (ABAB...), return their medians.

    Interleaving puts both under the same machine noise, which is what makes their ratio meaningful.
    """
    a, b = [], []
    for _ in range(rounds):
        a.append(first())
        b.append(second())
    return statistics.median(a), statistics.median(b)


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start
