"""Finding entries on disk, importing them, and parsing their hyper-parameters.

Importing an entry runs its code, so the harness only does that inside a child process
(`harness.worker`); the parent reads what it needs to list entries from the source alone.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import inspect
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.contract import Entry, Hparams
from harness.errors import EntryError, HparamError

# Scalar types the command line can parse, by the name the schema uses for them.
_SCALARS: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}
TRACKS = ("causal", "mlm")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class EntrySource:
    """An entry file as the parent sees it: never imported there."""

    name: str
    path: Path
    kind: str
    """`submission` or `baseline`."""
    source: str
    source_hash: str

    @classmethod
    def read(cls, path: Path, kind: str) -> EntrySource:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise EntryError(f"cannot read entry file {path}: {exc}") from exc
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return cls(name=path.stem, path=path.resolve(), kind=kind, source=text, source_hash=digest)


def discover(entry_dirs: dict[str, Path]) -> dict[str, EntrySource]:
    """Every `*.py` entry in the given folders (kind -> folder), by name.

    Files whose name starts with `_` (the template, helpers) are not entries. Two entries with
    one name in different folders are an error, since `harness run NAME` could not tell them apart.
    """
    found: dict[str, EntrySource] = {}
    for kind, folder in entry_dirs.items():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_"):
                continue
            entry = EntrySource.read(path, kind)
            if entry.name in found:
                raise EntryError(
                    f"two entries are named {entry.name!r}: {found[entry.name].path} and {path}. "
                    "Rename one of the files."
                )
            found[entry.name] = entry
    return found


def select(names: list[str], available: dict[str, EntrySource]) -> list[EntrySource]:
    """Resolve names (or paths to .py files) to entries, in the order given."""
    chosen = []
    for name in names:
        path = Path(name)
        if path.suffix == ".py":
            if not path.is_file():
                raise EntryError(f"entry file {path} does not exist")
            chosen.append(EntrySource.read(path, "submission"))
        elif name in available:
            chosen.append(available[name])
        else:
            known = ", ".join(sorted(available)) or "none"
            raise EntryError(
                f"no entry named {name!r} in submissions/ or baselines/ (known: {known}). "
                "Give a name from `harness list` or a path to a .py file."
            )
    return chosen


# --- Child-process side: importing and describing an entry -----------------------------------


def import_entry_class(path: Path) -> type[Entry]:
    """Import the module at `path` and return its one `Entry` subclass.

    Raises `EntryError` for a module that does not import or defines no / several entries.
    The module's own exception propagates unchanged (the worker classifies it as an import error).
    """
    module_name = f"harness_entry_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise EntryError(f"{path} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    spec.loader.exec_module(module)
    return find_entry_class(module, path)


def find_entry_class(module: types.ModuleType, path: Path) -> type[Entry]:
    classes = [
        obj for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, Entry) and obj is not Entry
        and obj.__module__ == module.__name__
    ]
    if len(classes) != 1:
        found = ", ".join(c.__name__ for c in classes) or "none"
        raise EntryError(
            f"{path} must define exactly one subclass of harness.contract.Entry (found: {found})."
        )
    return classes[0]


def check_entry_class(cls: type[Entry], path: Path) -> list[str]:
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
    return [f"{path}: {p}" for p in problems]


def _signature_problems(cls: type, method: str, impl: Any, params: int) -> list[str]:
    try:
        signature = inspect.signature(impl)
    except (TypeError, ValueError):
        return []
    positional = [
        p for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    has_varargs = any(p.kind == p.VAR_POSITIONAL for p in signature.parameters.values())
    required = [p for p in positional if p.default is p.empty]
    # `self` is the first positional parameter of a plain function looked up on the class.
    takes, needs = len(positional) - 1, len(required) - 1
    if needs > params or (takes < params and not has_varargs):
        return [f"{cls.__name__}.{method} must take {params} argument(s) besides self, "
                f"its signature is {method}{signature}"]
    return []


def entry_metadata(cls: type[Entry], path: Path) -> dict[str, str]:
    return {
        "name": str(cls.name or path.stem),
        "authors": str(cls.authors),
        "description": str(cls.description),
        "track": str(cls.track),
    }


# --- Hyper-parameters -------------------------------------------------------------------------


def hparam_schema(hparams_cls: type[Hparams]) -> dict[str, dict[str, Any]]:
    """Field name -> {"type": "int"|"float"|"bool"|"str"|"other", "optional": bool, "default": ...}."""
    hints = typing.get_type_hints(hparams_cls)
    schema = {}
    for field in dataclasses.fields(hparams_cls):
        type_name, optional = _scalar_type(hints.get(field.name, Any))
        default = field.default if field.default is not dataclasses.MISSING else None
        schema[field.name] = {"type": type_name, "optional": optional, "default": default}
    return schema


def _scalar_type(annotation: Any) -> tuple[str, bool]:
    args = typing.get_args(annotation)
    optional = type(None) in args
    candidates = [a for a in args if a is not type(None)] if args else [annotation]
    if len(candidates) == 1:
        for name, scalar in _SCALARS.items():
            if candidates[0] is scalar:
                return name, optional
    return "other", optional


def parse_overrides(pairs: list[str], schema: dict[str, dict[str, Any]], entry: str) -> dict[str, Any]:
    """Turn `key=value` strings into typed values, rejecting unknown keys and bad values."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise HparamError(f"--hparam {pair!r} is not of the form key=value (e.g. --hparam lr=0.002)")
        if key not in schema:
            raise HparamError(
                f"entry {entry!r} has no hyper-parameter {key!r}; it has: {', '.join(sorted(schema))}"
            )
        values[key] = parse_value(key, raw.strip(), schema[key], entry)
    return values


def parse_value(key: str, raw: str, field: dict[str, Any], entry: str) -> Any:
    if field["optional"] and raw.lower() == "none":
        return None
    parser = _PARSERS.get(field["type"])
    if parser is None:
        raise HparamError(f"hyper-parameter {key!r} of entry {entry!r} cannot be set from the command line")
    try:
        return parser(raw)
    except ValueError:
        expected = field["type"] + (" or none" if field["optional"] else "")
        raise HparamError(
            f"hyper-parameter {key!r} of entry {entry!r} must be {expected}, got {raw!r}"
        ) from None


def _parse_bool(raw: str) -> bool:
    if raw.lower() not in _TRUE | _FALSE:
        raise ValueError(raw)
    return raw.lower() in _TRUE


_PARSERS = {"int": int, "float": float, "str": str, "bool": _parse_bool}


def build_hparams(hparams_cls: type[Hparams], values: dict[str, Any]) -> Hparams:
    """Instantiate the entry's dataclass with overrides, checking the types of what arrives."""
    schema = hparam_schema(hparams_cls)
    for key, value in values.items():
        if key not in schema:
            raise HparamError(f"unknown hyper-parameter {key!r}; known: {', '.join(sorted(schema))}")
        _check_type(key, value, schema[key])
    hparams = hparams_cls(**values)
    for key in ("batch_size", "seq_len"):
        if not isinstance(getattr(hparams, key), int) or getattr(hparams, key) < 1:
            raise HparamError(f"hyper-parameter {key} must be a positive int, got {getattr(hparams, key)!r}")
    return hparams


def _check_type(key: str, value: Any, field: dict[str, Any]) -> None:
    if value is None and field["optional"]:
        return
    scalar = _SCALARS.get(field["type"])
    if scalar is None:
        return
    ok = isinstance(value, scalar) and not (scalar is int and isinstance(value, bool))
    if scalar is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise HparamError(f"hyper-parameter {key!r} must be {field['type']}, got {value!r}")


def static_metadata(entry: EntrySource) -> dict[str, str]:
    """name / authors / description / track read from the source without running it.

    Only string literals assigned in a class that derives from `Entry` are read; anything the
    source computes shows as empty here (the run records the real values).
    """
    found = {"name": entry.name, "authors": "", "description": "", "track": "causal"}
    try:
        tree = ast.parse(entry.source)
    except SyntaxError as exc:
        found["description"] = f"(does not parse: {exc.msg}, line {exc.lineno})"
        return found
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(_base_name(base) == "Entry" for base in node.bases):
            for statement in node.body:
                target, value = _simple_assignment(statement)
                if target in found and isinstance(value, ast.Constant) and isinstance(value.value, str):
                    if target != "name" or value.value:
                        found[target] = value.value
    return found


def _base_name(node: Any) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _simple_assignment(statement: Any) -> tuple[str, Any]:
    if isinstance(statement, ast.Assign) and len(statement.targets) == 1 and isinstance(statement.targets[0], ast.Name):
        return statement.targets[0].id, statement.value
    if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
        return statement.target.id, statement.value
    return "", None
