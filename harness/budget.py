"""Budgets: parsing them, and measuring a process tree's memory."""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass

import psutil

from harness.errors import ConfigError

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}


def parse_memory(text: str) -> int:
    """'8GiB', '512MiB', '2G', '1000000' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ConfigError(
            f"memory budget {text!r} is not a size; write it like 8GiB, 512MiB or 2GB"
        )
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ConfigError(f"memory budget {text!r} must be positive")
    return value


def format_bytes(count: float | None) -> str:
    if count is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


@dataclass(frozen=True)
class RunLimits:
    """Everything the supervisor enforces on one run."""

    seconds: float
    """Training budget (the clock described in harness.contract)."""
    memory_bytes: int
    grace_seconds: float | None = None
    """How far past the budget a step may run before the child is killed [default: 10% of the
    budget, between 2 and 10 seconds]."""
    eval_cap_seconds: float = 300.0
    """Longest one validation pass during training may take."""
    scoring_cap_seconds: float = 900.0
    """Longest the final phase (validation, causality audit, test) may take."""
    evals: int = 10
    """Validation passes during training, spread evenly over the budget."""

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ConfigError(f"time budget must be a positive number of seconds, got {self.seconds}")
        if self.evals < 0:
            raise ConfigError(f"the number of validation passes must be >= 0, got {self.evals}")

    @property
    def grace(self) -> float:
        if self.grace_seconds is not None:
            return self.grace_seconds
        return max(2.0, min(10.0, 0.1 * self.seconds))

    @property
    def kill_after_seconds(self) -> float:
        return self.seconds + self.grace


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes (0 if it is gone)."""
    try:
        root = psutil.Process(pid)
        processes = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue  # exited between listing and reading
    return total


def kill_tree(pid: int, include_root: bool = True) -> None:
    """SIGKILL a process, its process group and every descendant still around.

    With `include_root=False` (the process was already reaped, so its pid may be reused) only its
    process group is signalled: the child leads its own session, so the group id is its pid.
    """
    descendants = []
    if include_root:
        try:
            root = psutil.Process(pid)
            descendants = [root] + root.children(recursive=True)
        except psutil.Error:
            descendants = []
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for process in descendants:
        try:
            process.kill()
        except psutil.Error:
            continue
