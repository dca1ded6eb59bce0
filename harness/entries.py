"""Finding entries on disk and reading them as text, on the supervisor's side.

Importing an entry runs its code, so the supervisor never does: it reads names, authors, tracks
and descriptions from the source (`static_metadata`), and types `--hparam` strings against a
schema that a sandboxed process reported (`harness.checking.describe_entries`).
"""

from __future__ import annotations

import ast
import hashlib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import EntryError, HparamError, encodable

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
    problem: str | None = None
    """Why this entry may not run (a reserved or duplicate name): it fails alone, with this reason."""

    @classmethod
    def read(cls, path: Path, kind: str) -> EntrySource:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise EntryError(f"cannot read entry file {path}: {exc}") from exc
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return cls(name=path.stem, path=path.resolve(), kind=kind, source=text, source_hash=digest)


BASELINE_AUTHORS = "ptb-harness baselines"


def discover(entry_dirs: dict[str, Path]) -> dict[str, EntrySource]:
    """Every `*.py` entry in the given folders (kind -> folder), by name; never raises for an entry.

    Files whose name starts with `_` (the template, helpers) are not entries. Baselines come first
    and own their names and their author line: a submission that takes a baseline's file name or
    name, a name another submission already has, or the baselines' author line is kept under a
    distinct key with a `problem`, so it fails alone and every other entry runs.
    """
    found: dict[str, EntrySource] = {}
    names: dict[str, str] = {}  # display name -> the key that owns it
    order = sorted(entry_dirs.items(), key=lambda item: item[0] != "baseline")
    for kind, folder in order:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_"):
                continue
            entry = EntrySource.read(path, kind)
            meta = static_metadata(entry)
            problem = _name_problem(entry, meta, found, names)
            if problem:
                entry = EntrySource(f"{kind}s/{entry.name}", entry.path, kind, entry.source, entry.source_hash, problem)
            else:
                names[comparable(meta["name"])] = entry.name
            found[entry.name] = entry
    return found


def comparable(name: str) -> str:
    """A name as a reader sees it: NFKC, no invisible (format) characters, no outer spaces, case-folded,
    so `unigram\u200b` or `Ｕnigram` cannot pass for `unigram`."""
    folded = unicodedata.normalize("NFKC", name)
    return "".join(c for c in folded if unicodedata.category(c) not in ("Cf", "Cc")).strip().casefold()


def _name_problem(entry: EntrySource, meta: dict[str, str], found: dict[str, EntrySource],
                  names: dict[str, str]) -> str | None:
    if entry.kind == "baseline":
        return None
    if entry.name in found:
        return (f"the file name {entry.name!r} is taken by {found[entry.name].kind} {found[entry.name].path.name}; "
                "rename the file")
    if comparable(meta["name"]) in names:
        owner = found[names[comparable(meta["name"])]]
        return f"the name {meta['name']!r} is taken by {owner.kind} {owner.path.name}; choose another `name`"
    if BASELINE_AUTHORS in comparable(meta["authors"]):
        return f"the author line {BASELINE_AUTHORS!r} is reserved for the harness's baselines"
    return None


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
        elif any(key.endswith(f"/{name}") for key in available):  # a submission kept apart by its name
            chosen.extend(entry for key, entry in available.items() if key.endswith(f"/{name}"))
        else:
            known = ", ".join(sorted(available)) or "none"
            raise EntryError(
                f"no entry named {name!r} in submissions/ or baselines/ (known: {known}). "
                "Give a name from `harness list` or a path to a .py file."
            )
    return chosen


# --- Hyper-parameters -------------------------------------------------------------------------


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
    """One `--hparam` value, typed by the schema: a scalar, or for list fields `[20,30]` / `20,30`."""
    if field.get("optional") and raw.lower() == "none":
        return None
    parser = _PARSERS.get(field.get("type"))
    if parser is None:
        raise HparamError(f"hyper-parameter {key!r} of entry {entry!r} cannot be set from the command line")
    expected = field["type"] + (" list" if field.get("list") else "") + (" or none" if field.get("optional") else "")
    try:
        if field.get("list"):
            inner = raw.strip()
            if inner.startswith("[") and inner.endswith("]"):
                inner = inner[1:-1]
            return [parser(item.strip()) for item in inner.split(",") if item.strip()]
        return parser(raw)
    except ValueError:
        raise HparamError(f"hyper-parameter {key!r} of entry {entry!r} must be {expected}, got {raw!r}") from None


def _parse_bool(raw: str) -> bool:
    if raw.lower() not in _TRUE | _FALSE:
        raise ValueError(raw)
    return raw.lower() in _TRUE


_PARSERS = {"int": int, "float": float, "str": str, "bool": _parse_bool}


def static_metadata(entry: EntrySource) -> dict[str, str]:
    """name / authors / description / track read from the source without running it.

    Only string literals assigned in the entry class (or a base of it in the module) are read;
    anything the source computes shows as empty here.
    """
    found = {"name": entry.name, "authors": "", "description": "", "track": "causal"}
    try:
        tree = ast.parse(entry.source)
    except SyntaxError as exc:
        found["description"] = f"(does not parse: {exc.msg}, line {exc.lineno})"
        return found
    except (RecursionError, MemoryError, ValueError) as exc:  # nested too deep, or NUL bytes: its import fails
        found["description"] = f"(does not parse: {type(exc).__name__})"
        return found
    for node in _entry_chain(tree):
        for statement in node.body:
            target, value = _simple_assignment(statement)
            if target in found and isinstance(value, ast.Constant) and isinstance(value.value, str):
                if target != "name" or value.value:
                    found[target] = encodable(value.value)
    return found



def _entry_chain(tree: ast.Module) -> list[ast.ClassDef]:
    """The module's entry class and the classes of the module it derives from, base first, as the
    sandboxed loader picks it (the one Entry subclass nothing else derives from): a name or an author
    line set on a class built on a helper base is read all the same."""
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}

    def parents(node: ast.ClassDef) -> list[ast.ClassDef]:
        return [classes[_base_name(b)] for b in node.bases if _base_name(b) in classes and classes[_base_name(b)] is not node]

    def is_entry(node: ast.ClassDef, seen: frozenset[str] = frozenset()) -> bool:
        if node.name in seen:
            return False
        return any(_base_name(b) == "Entry" for b in node.bases) or any(
            is_entry(parent, seen | {node.name}) for parent in parents(node))

    entries = [node for node in classes.values() if is_entry(node)]
    leaves = [node for node in entries if not any(node in parents(other) for other in entries if other is not node)]
    if len(leaves) != 1:
        return entries  # none or several: the run fails on its import; show what the source says
    chain: list[ast.ClassDef] = []

    def climb(node: ast.ClassDef) -> None:
        if node in chain:
            return
        for parent in reversed(parents(node)):
            climb(parent)
        chain.append(node)

    climb(leaves[0])
    return chain


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
