"""The trainer: `python -I -m harness.sandboxed.trainer CHANNEL_FD`, inside the run's sandbox.

It imports the entry, builds it, and then asks the supervisor for work, one request at a time:
a batch to train on, an epoch boundary, a checkpoint to write, a validation result, or the end of
training. It holds no split: every training batch comes from the supervisor, which counts them.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.contract import Budget, Clock, Entry, SetupContext, ValidationInfo
from harness.sandboxed.common import Failure, call_entry, configure_process, environment, run_child
from harness.sandboxed.loader import build_hparams, import_entry_class
from harness.sandboxed.state import save_checkpoint
from harness.sandboxed.wire import Wire


def main(argv: list[str]) -> int:
    return run_child(argv, lambda spec, wire: Trainer(spec, wire).run())


class Trainer:
    def __init__(self, spec: dict[str, Any], wire: Wire) -> None:
        self.spec = spec
        self.wire = wire
        self.device = torch.device(spec["device"])
        self.work_dir = Path(spec["work_dir"])
        self.last_loss: float | None = None
        self.steps = 0

    def run(self) -> None:
        configure_process(self.spec["seed"], self.spec["threads"])
        if self.device.type == "cuda":
            memory = self.spec["memory_bytes"] / torch.cuda.get_device_properties(self.device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, memory), self.device)
        self.wire.send({"type": "environment", **environment(self.device)})
        cls = import_entry_class(Path(self.spec["entry_path"]))
        hparams = build_hparams(cls.Hparams, self.spec["hparams"])
        self.wire.send({"type": "hparams", "values": _jsonable(dataclasses.asdict(hparams)),
                        "batch_size": hparams.batch_size, "seq_len": hparams.seq_len,
                        "max_steps": hparams.max_steps, "max_epochs": hparams.max_epochs,
                        "validate_every_epoch": bool(getattr(cls, "validate_every_epoch", False))})
        context, _ = self.wire.receive()
        entry: Entry = call_entry("runtime_error", f"{cls.__name__}()", cls)
        entry.hparams = hparams
        self.clock = Clock(float(context["budget_seconds"]))
        ctx = setup_context(context, hparams, self.device, self.spec["seed"], self.clock, "trainer")
        call_entry("runtime_error", "setup", entry.setup, ctx)
        self.loop(entry)

    def loop(self, entry: Entry) -> None:
        while True:
            seq_len = call_entry("runtime_error", "next_seq_len", entry.next_seq_len)
            if seq_len is not None and (not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1):
                raise Failure("contract_violation", f"next_seq_len() must return a positive int or None, got {seq_len!r}")
            self.wire.send({"type": "next", "seq_len": seq_len, "loss": self.last_loss})
            message, payload = self.wire.receive()
            kind = message["type"]
            if kind == "batch":
                self.clock.elapsed = float(message["train_seconds"])
                if message.get("epoch_start"):
                    call_entry("runtime_error", f"on_epoch_start({message['epoch']})", entry.on_epoch_start,
                               message["epoch"])
                self.step(entry, message, payload)
            elif kind == "epoch_end":
                call_entry("runtime_error", f"on_epoch_end({message['epoch']})", entry.on_epoch_end, message["epoch"])
            elif kind == "checkpoint":
                self.checkpoint(entry, int(message["seq"]), final=False)
                self.wire.send({"type": "checkpoint_ready", "seq": message["seq"]})
            elif kind == "validation":
                info = ValidationInfo(float(message["perplexity"]), pass_index=message["pass_index"],
                                      passes=message["passes"], step=message["step"], tokens=message["tokens"],
                                      train_seconds=message["train_seconds"], last=message["last"])
                call_entry("runtime_error", "on_validation", entry.on_validation, info)
            elif kind == "stop":
                call_entry("runtime_error", "on_train_end", entry.on_train_end)
                self.checkpoint(entry, int(message["seq"]), final=True)
                self.wire.send({"type": "final_ready", "seq": message["seq"]})
                self.wire.receive()  # the supervisor ends this process now
                return

    def step(self, entry: Entry, message: dict[str, Any], payload: bytes) -> None:
        rows, cols = message["shape"]
        ids = torch.from_numpy(np.frombuffer(payload, dtype="<i4").astype(np.int64)).view(2, rows, cols)
        inputs, targets = ids[0].to(self.device), ids[1].to(self.device)  # (B, T) each
        loss = call_entry("runtime_error", f"train_step (step {self.steps})", entry.train_step, inputs, targets)
        try:
            value = float(loss)  # on CUDA this waits for the step, so the supervisor's clock sees it
        except (TypeError, ValueError, RuntimeError) as exc:
            raise Failure("contract_violation", "train_step must return the loss as a float or 0-dim tensor, "
                                                f"got {type(loss).__name__}: {exc}") from exc
        if not math.isfinite(value):
            raise Failure("non_finite", f"train_step returned a non-finite loss ({value}) at step {self.steps}; "
                                        "lower the learning rate or clip gradients")
        self.steps += 1
        self.last_loss = value

    def checkpoint(self, entry: Entry, seq: int, final: bool) -> None:
        call_entry("runtime_error", "prepare_for_eval", entry.prepare_for_eval)
        state = call_entry("runtime_error", "state_dict", entry.state_dict)
        call_entry("contract_violation", "writing the checkpoint", save_checkpoint, state,
                   self.work_dir / f"checkpoint-{seq}.safetensors")
        if not final:
            call_entry("runtime_error", "resume_training", entry.resume_training)


def setup_context(context: dict[str, Any], hparams: Any, device: torch.device, seed: int, clock: Clock | None,
                  role: str) -> SetupContext:
    """The SetupContext both processes build from the supervisor's `context` message."""
    vocab = tuple(context["vocab"])
    return SetupContext(
        vocab_size=len(vocab), vocab=vocab, eos_id=int(context["eos_id"]), device=device, seed=seed,
        budget=Budget(seconds=float(context["budget_seconds"]), memory_bytes=int(context["memory_bytes"])),
        hparams=hparams, steps_per_epoch=int(context["steps_per_epoch"]), train_tokens=int(context["train_tokens"]),
        mask_id=context.get("mask_id"), clock=clock, evals=int(context["evals"]),
        eval_window=int(context["eval_window"]), eval_segment_tokens=int(context["eval_segment_tokens"]),
        eval_batch_size=int(context["eval_batch_size"]), role=role,
    )


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()
            if v is None or isinstance(v, (bool, int, float, str, list, tuple))}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
