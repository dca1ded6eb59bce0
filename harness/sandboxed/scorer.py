"""The scoring server: `python -I -m harness.sandboxed.scorer CHANNEL_FD`, inside the run's sandbox.

A fresh process that imports the entry, builds it with `setup`, loads checkpoints the trainer
wrote, and answers `log_probs` for the windows the supervisor sends. It holds no split and never
sees a target. Each answer is the full (B, C + W, V) block of log-probs, written as float32 into
the shared memory the supervisor gave it; the supervisor checks and scores it.
"""

from __future__ import annotations

import mmap
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.contract import Entry
from harness.sandboxed.common import Failure, call_entry, configure_process, run_child
from harness.sandboxed.loader import build_hparams, import_entry_class
from harness.sandboxed.state import load_checkpoint, modules
from harness.sandboxed.trainer import setup_context
from harness.sandboxed.wire import Wire


def main(argv: list[str]) -> int:
    return run_child(argv, lambda spec, wire: Scorer(spec, wire).serve())


class Scorer:
    def __init__(self, spec: dict[str, Any], wire: Wire) -> None:
        self.spec = spec
        self.wire = wire
        self.device = torch.device(spec["device"])
        self.shared = mmap.mmap(int(spec["shm_fd"]), int(spec["shm_bytes"]))
        self.slot_bytes = int(spec["slot_bytes"])
        self.states: dict[str, Any] = {}
        self.vocab_size = 0

    def serve(self) -> None:
        configure_process(self.spec["seed"], self.spec["threads"])
        cls = import_entry_class(Path(self.spec["entry_path"]))
        hparams = build_hparams(cls.Hparams, self.spec["hparams"])
        self.wire.send({"type": "hparams", "batch_size": hparams.batch_size, "seq_len": hparams.seq_len,
                        "max_steps": hparams.max_steps, "max_epochs": hparams.max_epochs, "values": {}})
        context, _ = self.wire.receive()
        self.vocab_size = len(context["vocab"])
        entry: Entry = call_entry("runtime_error", f"{cls.__name__}()", cls)
        entry.hparams = hparams
        ctx = setup_context(context, hparams, self.device, self.spec["seed"], None, "scorer")
        call_entry("runtime_error", "setup", entry.setup, ctx)
        context_tokens, window = entry.eval_context, entry.eval_window
        for name, value in (("eval_context", context_tokens), ("eval_window", window)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise Failure("contract_violation", f"{name} must be an int, got {value!r}")
        self.wire.send({"type": "ready", "eval_context": context_tokens, "eval_window": window})
        while True:
            message, payload = self.wire.receive()
            if message["type"] == "load":
                self.load(entry, message)
            elif message["type"] == "log_probs":
                self.answer(entry, message, payload)
            else:  # "end"
                return

    def load(self, entry: Entry, message: dict[str, Any]) -> None:
        path = Path(self.spec["checkpoint_dir"]) / message["file"]
        state = call_entry("contract_violation", "reading the checkpoint", load_checkpoint, path, self.device)
        call_entry("runtime_error", "load_state_dict", entry.load_state_dict, state)
        for module in modules(entry):
            module.train(False)
        self.states.clear()
        self.wire.send({"type": "loaded", "seq": message["seq"]})

    def answer(self, entry: Entry, message: dict[str, Any], payload: bytes) -> None:
        rows, cols = message["shape"]
        inputs = torch.from_numpy(np.frombuffer(payload, dtype="<i4").astype(np.int64)).view(rows, cols)
        stream = message["stream"]
        with torch.inference_mode():
            state = (call_entry("runtime_error", "initial_state", entry.initial_state, rows)
                     if message["fresh"] else self.states.pop(stream, None))
            out = call_entry("runtime_error", "log_probs", entry.log_probs, inputs.to(self.device), state)
            log_probs, state = self.check(out, rows, cols)
            offset = int(message["slot"]) * self.slot_bytes
            target = torch.frombuffer(self.shared, dtype=torch.float32, count=rows * cols * self.vocab_size,
                                      offset=offset)
            # One pass straight into the shared block, whatever the dtype, device or layout (an
            # expanded view is read as it is): no float32 copy in between.
            target.view(rows, cols, self.vocab_size).copy_(log_probs.detach())  # (B, C + W, V)
        self.states[stream] = state  # kept until the next load, whatever the request: all look alike
        self.wire.send({"type": "rows", "id": message["id"]})

    def check(self, out: Any, rows: int, cols: int) -> tuple[torch.Tensor, Any]:
        """What only this side can see (the tensor's type, dtype and device); the numbers are checked outside."""
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], torch.Tensor)):
            raise Failure("invalid_output",
                          f"log_probs must return a tuple (log_probs tensor, state), got {type(out).__name__}")
        log_probs, state = out
        expected = (rows, cols, self.vocab_size)
        if tuple(log_probs.shape) != expected:
            raise Failure("invalid_output", f"log_probs returned shape {tuple(log_probs.shape)}, expected {expected} "
                                            "(batch, positions, vocabulary)")
        if not log_probs.is_floating_point():
            raise Failure("invalid_output", f"log_probs returned dtype {log_probs.dtype}, expected a float dtype")
        if log_probs.device.type != self.device.type:
            raise Failure("invalid_output", f"log_probs returned a tensor on {log_probs.device}, expected {self.device}")
        return log_probs, state


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
