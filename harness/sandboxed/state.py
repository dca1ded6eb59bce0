"""An entry's state: the default `state_dict` / `load_state_dict`, and checkpoint files.

The default state is every module, tensor, numpy array and optimiser the entry holds, found
recursively through its attributes, lists, tuples and dicts. Checkpoints are safetensors files:
a JSON header and raw tensor bytes, which the supervisor can read (for the parameter count)
without unpickling anything. Non-tensor values of a state (numbers, strings, the shape of nested
lists and dicts) travel as JSON in the header's metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.sandboxed.common import Failure

MAX_DEPTH = 6
OPTIMISERS = "optim"
"""Top-level key of the default state under which optimisers go (not counted as parameters)."""


def walk(root: Any) -> Iterator[tuple[str, Any]]:
    """(dotted name, value) of every module, tensor, array and optimiser held by `root`'s attributes."""
    seen: set[int] = set()

    def visit(name: str, value: Any, depth: int) -> Iterator[tuple[str, Any]]:
        if id(value) in seen or depth > MAX_DEPTH:
            return
        if isinstance(value, (torch.nn.Module, torch.Tensor, np.ndarray, torch.optim.Optimizer)):
            seen.add(id(value))
            yield name, value
        elif isinstance(value, (list, tuple)):
            seen.add(id(value))
            for index, item in enumerate(value):
                yield from visit(f"{name}.{index}", item, depth + 1)
        elif isinstance(value, dict):
            seen.add(id(value))
            for key, item in value.items():
                if isinstance(key, (str, int)):
                    yield from visit(f"{name}.{key}", item, depth + 1)
        elif hasattr(value, "__dict__") and not isinstance(value, type) and depth > 0:
            seen.add(id(value))  # a plain object holding a model (e.g. a wrapper): look inside
            for key, item in sorted(vars(value).items()):
                yield from visit(f"{name}.{key}", item, depth + 1)

    for key, value in sorted(vars(root).items()):
        if key != "hparams" and not key.startswith("_"):  # _names are the entry's scratch
            yield from visit(key, value, 1)


def modules(root: Any) -> list[torch.nn.Module]:
    return [value for _, value in walk(root) if isinstance(value, torch.nn.Module)]


def default_state_dict(root: Any) -> dict[str, Any]:
    state: dict[str, Any] = {"entry": {}, OPTIMISERS: {}}
    for name, value in walk(root):
        if isinstance(value, torch.nn.Module):
            state["entry"][name] = value.state_dict()
        elif isinstance(value, torch.optim.Optimizer):
            state[OPTIMISERS][name] = value.state_dict()
        else:
            state["entry"][name] = value
    return state


def default_load_state_dict(root: Any, state: dict[str, Any]) -> None:
    held, optimisers = state.get("entry", {}), state.get(OPTIMISERS, {})
    for name, value in walk(root):
        source = optimisers if isinstance(value, torch.optim.Optimizer) else held
        if name not in source:
            raise KeyError(f"the checkpoint has no {name!r}: build the same attributes in setup() as in training")
        loaded = source[name]
        if isinstance(value, (torch.nn.Module, torch.optim.Optimizer)):
            value.load_state_dict(loaded)
        elif isinstance(value, torch.Tensor):
            with torch.no_grad():
                value.copy_(torch.as_tensor(loaded).to(value.device))
        else:
            value[...] = np.asarray(loaded)


# --- Checkpoint files ----------------------------------------------------------------------------


def save_checkpoint(state: Any, path: Path) -> None:
    """Write `state` to `path` atomically (a reader never sees half a file)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    storages: dict[tuple[str, int, int, tuple[int, ...], str], str] = {}
    structure = _pack(state, "", tensors, storages)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata={"structure": json.dumps(structure)})
    os.replace(partial, path)


def load_checkpoint(path: Path, device: torch.device) -> Any:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=str(device)) as handle:
        structure = json.loads((handle.metadata() or {}).get("structure", "null"))
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return _unpack(structure, tensors)


def _pack(value: Any, path: str, tensors: dict[str, torch.Tensor],
          storages: dict[tuple[str, int, int, tuple[int, ...], str], str]) -> Any:
    if isinstance(value, np.ndarray):
        key = path or "value"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value)).clone()
        return {"a": key}
    if isinstance(value, torch.Tensor):
        original = value.detach()
        # Identity from the tensor where it lives: a CPU copy of a CUDA tensor is new memory each time,
        # and a freed copy's address can come back for another tensor (a false "tied" match).
        identity = (str(original.device), original.untyped_storage().data_ptr(), original.storage_offset(),
                    tuple(original.shape), str(original.dtype))
        if identity in storages:  # the same tensor twice (tied weights): store it once
            return {"t": storages[identity]}
        key = path or "value"
        tensors[key] = original.to("cpu").contiguous().clone()  # safetensors refuses tensors that share memory
        storages[identity] = key
        return {"t": key}
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise Failure("contract_violation", f"state_dict key {k!r} at {path or 'top'} is not a str or int")
            items.append([k, _pack(v, f"{path}/{k}" if path else str(k), tensors, storages)])
        return {"d": items}
    if isinstance(value, (list, tuple)):
        packed = [_pack(v, f"{path}/{i}" if path else str(i), tensors, storages) for i, v in enumerate(value)]
        return {"u" if isinstance(value, tuple) else "l": packed}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"v": value}
    raise Failure("contract_violation",
                  f"state_dict holds a {type(value).__name__} at {path or 'top'}: only tensors, numpy arrays, "
                  "numbers, strings, None and lists, tuples and dicts of them can be checkpointed")


def _unpack(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if not isinstance(node, dict) or len(node) != 1:
        raise ValueError("malformed checkpoint structure")
    (kind, body), = node.items()
    if kind == "t":
        return tensors[body]
    if kind == "a":
        return tensors[body].numpy()
    if kind == "d":
        return {k: _unpack(v, tensors) for k, v in body}
    if kind == "l":
        return [_unpack(v, tensors) for v in body]
    if kind == "u":
        return tuple(_unpack(v, tensors) for v in body)
    return body
