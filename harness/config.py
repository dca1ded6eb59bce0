"""The competition config (`competition.toml`): what an organiser sets.

Precedence: the built-in defaults < the config file < command-line flags. An unknown key or a
value of the wrong type is an error that names the key.

    [competition]
    name = "PTB word level"
    phase = "open"        # open: only validation scores are public; final: test scores revealed
    seeds = 1             # runs per entry, seeds 0 .. seeds - 1
    evals = 10            # validation passes during training
    tracks = ["causal", "mlm"]  # only entries of these tracks are run and ranked

    [divisions.cpu]       # one per hardware class; `harness run` picks the one for its device
    device = "cpu"
    budget = 600          # training seconds
    memory = "8GiB"

    [entries.my_lstm.hparams]   # optional: pin an entry's official hyper-parameters
    lr = 0.002

    [cluster]             # where runs execute (see harness/executors.py)
    executor = "local"    # local: one after another here; ray: one Ray task per run
    ray_address = "auto"  # the Ray cluster for executor = "ray" (default: RAY_ADDRESS, else auto)

An entry's official configuration in a division is its current source, its declared
hyper-parameters (with the pinned ones applied), the division's budget and memory, and `evals`;
only runs of exactly that configuration are ranked (see `harness.results`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.budget import parse_memory
from harness.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PHASES = ("open", "final")
EXECUTORS = ("local", "ray")
TRACKS = ("causal", "mlm")
DEFAULT_CONFIG_FILE = "competition.toml"


@dataclass(frozen=True)
class Division:
    name: str
    device: str
    budget: float
    memory: str
    hardware: str | None = None
    """The hardware class its runs are keyed by, e.g. "cuda:NVIDIA H100 80GB HBM3" [default: the
    driver's own CPU or GPU]. Declare it when runs execute elsewhere (--executor ray)."""

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)


@dataclass(frozen=True)
class Competition:
    name: str = "PTB word level"
    phase: str = "open"
    seeds: int = 1
    evals: int = 10
    tracks: tuple[str, ...] = ("causal", "mlm")
    divisions: dict[str, Division] = field(default_factory=lambda: {
        "cpu": Division("cpu", "cpu", 600.0, "8GiB"),
        "cuda": Division("cuda", "cuda", 300.0, "40GiB"),
    })
    pinned_hparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    """entry name -> hyper-parameters its official runs use instead of the declared defaults."""
    executor: str = "local"
    ray_address: str | None = None
    source: str = "built-in defaults"

    def official_hparams(self, entry: str) -> dict[str, Any]:
        """The overrides an official run of `entry` carries: the pinned ones, or none."""
        return dict(self.pinned_hparams.get(entry, {}))

    def pinned_pairs(self, entry: str) -> list[str]:
        """The pinned hyper-parameters as `key=value` text, to be typed like `--hparam` against the schema."""
        return [f"{key}={_toml_text(value)}" for key, value in self.official_hparams(entry).items()]

    def division_for(self, device: str, name: str | None = None) -> Division:
        if name is not None:
            if name not in self.divisions:
                raise ConfigError(f"no division {name!r} in {self.source}; divisions: {', '.join(self.divisions)}")
            return self.divisions[name]
        for division in self.divisions.values():
            if division.device == device:
                return division
        raise ConfigError(f"no division for device {device!r} in {self.source}; add [divisions.{device}]")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "phase": self.phase, "seeds": self.seeds, "evals": self.evals,
                "tracks": list(self.tracks), "source": self.source, "executor": self.executor,
                "divisions": {k: vars(v) for k, v in self.divisions.items()},
                "pinned_hparams": {k: dict(v) for k, v in self.pinned_hparams.items()}}


_COMPETITION_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str, "phase": str, "seeds": int, "evals": int, "tracks": list,
}
_CLUSTER_KEYS: dict[str, type | tuple[type, ...]] = {"executor": str, "ray_address": str}
_DIVISION_KEYS: dict[str, type | tuple[type, ...]] = {
    "device": str, "budget": (int, float), "memory": str, "hardware": str,
}
_OPTIONAL_DIVISION_KEYS = {"hardware"}


def load_competition(path: str | Path | None) -> Competition:
    """The config at `path`, or `competition.toml` in the current folder if it exists, else defaults."""
    if path is None:
        candidate = Path(DEFAULT_CONFIG_FILE)
        if not candidate.is_file():
            return Competition()
        path = candidate
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return parse_competition(raw, str(path))


def parse_competition(raw: dict[str, Any], source: str) -> Competition:
    unknown = set(raw) - {"competition", "divisions", "entries", "cluster"}
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(sorted(unknown))}; "
                          "expected [competition], [divisions.NAME], [entries.NAME.hparams], [cluster]")
    settings = _checked(raw.get("competition", {}), _COMPETITION_KEYS, f"{source} [competition]")
    competition = replace(Competition(), source=source, **{
        key: tuple(value) if key == "tracks" else value for key, value in settings.items()
    })
    if "cluster" in raw:
        competition = replace(competition, **_checked(raw["cluster"], _CLUSTER_KEYS, f"{source} [cluster]"))
    if "divisions" in raw:
        divisions = {}
        for name, table in raw["divisions"].items():
            where = f"{source} [divisions.{name}]"
            values = _checked(table, _DIVISION_KEYS, where)
            missing = set(_DIVISION_KEYS) - _OPTIONAL_DIVISION_KEYS - set(values)
            if missing:
                raise ConfigError(f"{where}: missing key(s) {', '.join(sorted(missing))}")
            parse_memory(values["memory"])
            divisions[name] = Division(name=name, device=values["device"], budget=float(values["budget"]),
                                       memory=values["memory"], hardware=values.get("hardware"))
        competition = replace(competition, divisions=divisions)
    if "entries" in raw:
        competition = replace(competition, pinned_hparams=_pinned_hparams(raw["entries"], source))
    _validate(competition, source)
    return competition


def _pinned_hparams(entries: Any, source: str) -> dict[str, dict[str, Any]]:
    """`[entries.NAME.hparams]` tables: scalar values only (they are typed against the entry's schema at run time)."""
    if not isinstance(entries, dict):
        raise ConfigError(f"{source} [entries] must be a table of [entries.NAME.hparams] tables")
    pinned = {}
    for name, table in entries.items():
        where = f"{source} [entries.{name}]"
        if not isinstance(table, dict) or set(table) - {"hparams"}:
            raise ConfigError(f"{where}: the only key is the table hparams, e.g. [entries.{name}.hparams] lr = 0.002")
        values = table.get("hparams", {})
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: hparams must be a table")
        for key, value in values.items():
            if not isinstance(value, (bool, int, float, str)):
                raise ConfigError(f"{where}.hparams: {key!r} must be a number, string or boolean, got {value!r}")
        pinned[name] = dict(values)
    return pinned


def _toml_text(value: Any) -> str:
    """A pinned TOML value as `--hparam` would spell it (booleans are lower case there)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _checked(table: Any, schema: dict[str, type | tuple[type, ...]], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    for key, value in table.items():
        if key not in schema:
            raise ConfigError(f"{where}: unknown key {key!r}; known keys: {', '.join(schema)}")
        expected = schema[key]
        if not isinstance(value, expected) or isinstance(value, bool):
            names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
            raise ConfigError(f"{where}: {key!r} must be {names}, got {value!r}")
    return dict(table)


def _validate(competition: Competition, source: str) -> None:
    if competition.phase not in PHASES:
        raise ConfigError(f"{source}: phase must be one of {', '.join(PHASES)}, got {competition.phase!r}")
    if competition.executor not in EXECUTORS:
        raise ConfigError(f"{source} [cluster]: executor must be one of {', '.join(EXECUTORS)}, "
                          f"got {competition.executor!r}")
    if competition.seeds < 1:
        raise ConfigError(f"{source}: seeds must be at least 1, got {competition.seeds}")
    if competition.evals < 0:
        raise ConfigError(f"{source}: evals must be >= 0, got {competition.evals}")
    unknown_tracks = [track for track in competition.tracks if track not in TRACKS]
    if unknown_tracks or not competition.tracks:
        raise ConfigError(f"{source}: tracks must list some of {', '.join(TRACKS)}, got {list(competition.tracks)}")
    for division in competition.divisions.values():
        if division.device not in ("cpu", "cuda"):
            raise ConfigError(f"{source} [divisions.{division.name}]: device must be cpu or cuda")
        if division.budget <= 0:
            raise ConfigError(f"{source} [divisions.{division.name}]: budget must be positive")
