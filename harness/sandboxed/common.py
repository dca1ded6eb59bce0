"""Process set-up and error capture shared by the trainer, the scorer and the describer.

A failure found here is reported to the supervisor as a claim about the entry (its kind and a
reason). A claim can only end the entry's own run: the supervisor accepts a fixed set of kinds
from a child and never a success.
"""

from __future__ import annotations

import os
import platform
import random
import signal
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


class Failure(Exception):
    """The entry broke the contract or raised; `kind` is one of the supervisor's failure kinds."""

    def __init__(self, kind: str, reason: str, trace: str | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.trace = trace


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (the sandbox's init dies with the supervisor)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


def configure_process(seed: int, threads: int) -> None:
    """Same seed and thread count in every process of a run, so results are reproducible."""
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def call_entry(kind: str, where: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call entry code; turn what it raises into a `Failure` naming the call."""
    try:
        return function(*args, **kwargs)
    except Failure:
        raise
    except SystemExit as exc:
        raise Failure(kind, f"{where} called sys.exit({exc.code!r})", traceback.format_exc()) from exc
    except (torch.OutOfMemoryError, MemoryError) as exc:
        raise Failure("out_of_memory", f"{where} ran out of memory: {exc}", traceback.format_exc()) from exc
    except Exception as exc:
        if isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc):  # CPU allocator's OOM
            raise Failure("out_of_memory", f"{where} ran out of memory: {exc}", traceback.format_exc()) from exc
        raise Failure(kind, f"{where} raised {type(exc).__name__}: {exc}", traceback.format_exc()) from exc


def failure_message(exc: BaseException) -> dict[str, Any]:
    """What the supervisor is told when this process gives up."""
    if isinstance(exc, Failure):
        return {"type": "failure", "kind": exc.kind, "reason": exc.reason[:4000],
                "traceback": (exc.trace or traceback.format_exc())[-16000:]}
    return {"type": "failure", "kind": "runtime_error", "reason": f"{type(exc).__name__}: {exc}"[:4000],
            "traceback": traceback.format_exc()[-16000:]}


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware as seen from inside (informational: shown, never used to decide)."""
    cuda = device.type == "cuda"
    return {
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
        "numpy_version": np.__version__,
        "pid_namespace_pid": os.getpid(),
    }


def run_child(argv: list[str], body: Callable[[dict[str, Any], Any], None]) -> int:
    """A child's main: the channel from argv, the spec as its first frame, `body`, and whatever ends
    it reported to the supervisor (a clean SystemExit(0) is the supervisor closing the channel)."""
    from harness.sandboxed.wire import Wire

    die_with_parent()
    wire = Wire(int(argv[0]))
    spec, _ = wire.receive()
    try:
        body(spec, wire)
    except BaseException as exc:  # noqa: BLE001 - reported, then this process ends
        if isinstance(exc, SystemExit) and exc.code == 0:
            return 0
        wire.send(failure_message(exc))
        return 1
    return 0
