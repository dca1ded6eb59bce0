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

    [cluster]             # where runs execute (see harness/executors.py)
    executor = "local"    # local: one after another here; ray: one Ray task per run
    ray_address = "auto"  # the Ray cluster for executor = "ray" (default: RAY_ADDRESS, else auto)
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
    executor: str = "local"
    ray_address: str | None = None
    source: str = "built-in defaults"

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
                "divisions": {k: vars(v) for k, v in self.divisions.items()}}


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
    unknown = set(raw) - {"competition", "divisions", "cluster"}
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(sorted(unknown))}; expected [competition], "
                          "[divisions.NAME], [cluster]")
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
    _validate(competition, source)
    return competition


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
