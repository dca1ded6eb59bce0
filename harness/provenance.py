"""What identifies a run's result, and where it came from: run keys, hardware and the git commit."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import harness


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_fingerprint(device: str, threads: int | None = None) -> str:
    """The hardware class a result depends on: the CPU model and the cores the run gets (its
    `threads`, at most this machine's; default all of them), or the GPU name."""
    if device == "cuda":
        import torch

        return f"cuda:{torch.cuda.get_device_name(0)}"
    cores = os.cpu_count() or 1
    return f"cpu:{cpu_model()}:{min(threads, cores) if threads else cores}"


@lru_cache(maxsize=1)
def harness_git_commit() -> str | None:
    """The commit of the harness checkout, when it runs from one."""
    root = Path(harness.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def run_key(**parts: Any) -> str:
    """A digest of everything that determines a run's result (see `harness.supervisor.key_parts`)."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def configuration_digest(**parts: Any) -> str:
    """The run key without the seed: runs with equal digests are seeds of one configuration.

    `run_key(seed=s, **parts)` and `configuration_digest(**parts)` take the same parts; the
    rankings group seeds by this digest (see `harness.results.configuration_parts`).
    """
    return run_key(**parts)
