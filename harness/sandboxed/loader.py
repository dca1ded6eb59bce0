"""Importing an entry, checking its class against the contract, and building its hyper-parameters.

Importing runs the participant's code, so this module exists only on the sandboxed side.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any

from harness.contract import Entry, Hparams
from harness.sandboxed.common import Failure, call_entry

# Scalar types the command line can parse, by the name the schema uses for them.
SCALARS: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}
TRACKS = ("causal", "mlm")


def import_entry_class(path: Path) -> type[Entry]:
    """Import the module at `path` and return its one `Entry` subclass, checked against the contract."""
    cls = call_entry("import_error", f"importing {path.name}", _import, path)
    problems = check_entry_class(cls)
    if problems:
        raise Failure("contract_violation", "; ".join(f"{path.name}: {p}" for p in problems))
    return cls


def _import(path: Path) -> type[Entry]:
    module_name = f"harness_entry_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise Failure("import_error", f"{path.name} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look modules up here
    spec.loader.exec_module(module)
    return find_entry_class(module, path)


def find_entry_class(module: types.ModuleType, path: Path) -> type[Entry]:
    classes = [obj for obj in vars(module).values()
               if inspect.isclass(obj) and issubclass(obj, Entry) and obj is not Entry
               and obj.__module__ == module.__name__]
    # A module may build its entry on a base class of its own: the entry is the one class nothing derives from.
    leaves = [c for c in classes if not any(other is not c and issubclass(other, c) for other in classes)]
    if len(leaves) == 1:
        return leaves[0]
    if len(classes) != 1:
        found = ", ".join(c.__name__ for c in classes) or "none"
        raise Failure("contract_violation",
                      f"{path.name} must define exactly one subclass of harness.contract.Entry (found: {found})")
    return classes[0]


def check_entry_class(cls: type[Entry]) -> list[str]:
    """Contract problems visible without running anything: missing methods, wrong signatures."""
    problems = []
    for method, params in (("setup", 1), ("train_step", 2), ("log_probs", 2), ("initial_state", 1)):
        impl = getattr(cls, method, None)
        if method != "initial_state" and impl is getattr(Entry, method):
            problems.append(f"{cls.__name__}.{method} is not defined")
            continue
        if not callable(impl):
            problems.append(f"{cls.__name__}.{method} is not a method")
            continue
        problems.extend(_signature_problems(cls, method, impl, params))
    if not (inspect.isclass(cls.Hparams) and issubclass(cls.Hparams, Hparams)
            and dataclasses.is_dataclass(cls.Hparams)):
        problems.append(f"{cls.__name__}.Hparams must be a @dataclass subclass of harness.contract.Hparams")
    if not isinstance(cls.eval_context, int) or cls.eval_context < 0:
        problems.append(f"{cls.__name__}.eval_context must be a non-negative int")
    if cls.track not in TRACKS:
        problems.append(f"{cls.__name__}.track is {cls.track!r}; it must be one of {', '.join(TRACKS)}")
    return problems


def _signature_problems(cls: type, method: str, impl: Any, params: int) -> list[str]:
    try:
        signature = inspect.signature(impl)
    except (TypeError, ValueError):
        return []
    positional = [p for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    has_varargs = any(p.kind == p.VAR_POSITIONAL for p in signature.parameters.values())
    required = [p for p in positional if p.default is p.empty]
    takes, needs = len(positional) - 1, len(required) - 1  # `self` is the first positional parameter
    if needs > params or (takes < params and not has_varargs):
        return [f"{cls.__name__}.{method} must take {params} argument(s) besides self, "
                f"its signature is {method}{signature}"]
    return []


# --- Hyper-parameters -------------------------------------------------------------------------


def hparam_schema(hparams_cls: type[Hparams]) -> dict[str, dict[str, Any]]:
    """Field -> {"type": "int"|"float"|"bool"|"str"|"other", "list": bool, "optional": bool, "default": ...}."""
    hints = typing.get_type_hints(hparams_cls)
    schema = {}
    for field in dataclasses.fields(hparams_cls):
        type_name, is_list, optional = _field_type(hints.get(field.name, Any))
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:  # lists and tuples need a factory
            default = field.default_factory()
        else:
            default = None
        if isinstance(default, tuple):
            default = list(default)
        schema[field.name] = {"type": type_name, "list": is_list, "optional": optional, "default": default}
    return schema


def _field_type(annotation: Any) -> tuple[str, bool, bool]:
    args = typing.get_args(annotation)
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args
    candidates = [a for a in args if a is not type(None)] if optional else [annotation]
    if len(candidates) != 1:
        return "other", False, optional
    inner = candidates[0]
    if typing.get_origin(inner) in (list, tuple):
        element = [a for a in typing.get_args(inner) if a is not Ellipsis]
        if len(set(element)) == 1:
            name = _scalar_name(element[0])
            return (name, True, optional) if name else ("other", False, optional)
        return "other", False, optional
    return _scalar_name(inner) or "other", False, optional


def _scalar_name(kind: Any) -> str | None:
    return next((name for name, scalar in SCALARS.items() if kind is scalar), None)


def build_hparams(hparams_cls: type[Hparams], values: dict[str, Any]) -> Hparams:
    """The entry's dataclass with the supervisor's typed overrides, checked again here."""
    schema = hparam_schema(hparams_cls)
    for key, value in values.items():
        if key not in schema:
            raise Failure("contract_violation", f"unknown hyper-parameter {key!r}; known: {', '.join(sorted(schema))}")
        _check_type(key, value, schema[key])
    hints = typing.get_type_hints(hparams_cls)
    converted = {k: tuple(v) if isinstance(v, list) and _wants_tuple(hints.get(k)) else v for k, v in values.items()}
    hparams = call_entry("contract_violation", f"{hparams_cls.__name__}(...)", hparams_cls, **converted)
    for key in ("batch_size", "seq_len"):
        value = getattr(hparams, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise Failure("contract_violation", f"hyper-parameter {key} must be a positive int, got {value!r}")
    return hparams


def _wants_tuple(annotation: Any) -> bool:
    if typing.get_origin(annotation) is tuple:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(typing.get_origin(member) is tuple for member in typing.get_args(annotation))
    return False


def _check_type(key: str, value: Any, field: dict[str, Any]) -> None:
    if value is None and field["optional"]:
        return
    scalar = SCALARS.get(field["type"])
    if scalar is None:
        return
    items = value if field["list"] and isinstance(value, list) else [value]
    if field["list"] and not isinstance(value, list):
        raise Failure("contract_violation", f"hyper-parameter {key!r} must be a list of {field['type']}, got {value!r}")
    for item in items:
        ok = isinstance(item, scalar) and not (scalar is int and isinstance(item, bool))
        ok = ok or (scalar is float and isinstance(item, int) and not isinstance(item, bool))
        if not ok:
            raise Failure("contract_violation", f"hyper-parameter {key!r} must be {field['type']}, got {value!r}")
