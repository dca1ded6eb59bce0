"""Checkpoint files of an entry's state (harness.sandboxed.state): a tensor held twice (tied weights)
is stored once and comes back tied; distinct tensors of the same shape are never merged."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.sandboxed.state import load_checkpoint, save_checkpoint


def test_tied_weights_are_stored_once_and_distinct_tensors_are_kept_apart(tmp_path: Path) -> None:
    shared = torch.randn(4, 3)
    state = {"embed": shared, "head": shared,  # tied: one storage
             "layers": [torch.randn(4, 3) for _ in range(20)],  # same shape, distinct values
             "view": shared[1:]}  # a view of the tied storage at another offset: its own entry
    path = tmp_path / "state.safetensors"
    save_checkpoint(state, path)
    loaded = load_checkpoint(path, torch.device("cpu"))
    assert torch.equal(loaded["embed"], shared) and torch.equal(loaded["head"], shared)
    assert loaded["embed"] is loaded["head"]  # stored once, read back as one tensor
    assert all(torch.equal(a, b) for a, b in zip(loaded["layers"], state["layers"]))
    assert torch.equal(loaded["view"], shared[1:])

