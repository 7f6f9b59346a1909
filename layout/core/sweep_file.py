"""Sweep files: a base run config, overrides for every point, and a grid of values, read and checked
before anything runs (the sweep itself is layout/pipeline/sweep.py).

    base: euclid.yaml              # relative to the sweep file
    set:                           # optional, applied to every point
      structure.stability_seeds: 0
    grid:                          # every combination of these values is one point
      train.l1: [0, 0.0001, 0.0003]
      train.seed: [0, 1, 2]
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from layout.core.config import RunConfig
from layout.core.config_file import load_config, read_yaml_mapping, unknown_key_message, valid_paths, with_data_dir
from layout.core.config_values import is_folder_name
from layout.core.errors import ConfigError
from layout.core.layers import describe, parse_layers


@dataclass(frozen=True)
class Sweep:
    name: str
    base: Path
    settings: tuple[str, ...]  # "key=value" overrides for every point
    grid: tuple[tuple[str, tuple], ...]  # (dotted key, values)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.grid)

    def points(self) -> list[dict]:
        """Every combination of the grid's values, the last key varying fastest."""
        return [dict(zip(self.keys, combo)) for combo in itertools.product(*(v for _, v in self.grid))]


def read_sweep(path: str | Path) -> Sweep:
    """A sweep file, checked: a base config that exists, known keys, a non-empty list per grid key."""
    path = Path(path)
    raw = read_yaml_mapping(path)
    unknown = set(raw) - {"name", "base", "set", "grid"}
    if unknown:
        raise ConfigError(f"sweep file '{path}': unknown key {sorted(unknown)[0]!r}: a sweep has name, base, set "
                          "and grid")
    if not isinstance(raw.get("base"), str):
        raise ConfigError(f"sweep file '{path}' needs 'base: <run config>', e.g. base: euclid.yaml")
    base = path.parent / raw["base"]
    if not base.is_file():
        raise ConfigError(f"sweep file '{path}': base config '{base}' not found: check the path")
    settings = mapping(raw.get("set") or {}, path, "set")
    grid = mapping(raw.get("grid"), path, "grid")
    if not grid:
        raise ConfigError(f"sweep file '{path}' needs a grid: 'grid:' with at least one key and its list of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep file '{path}': grid.{key} must be a non-empty list of values, e.g. [0, 0.001]")
    name = str(raw.get("name") or path.stem)
    if not is_folder_name(name):
        raise ConfigError(f"sweep file '{path}': name {name!r} is not a plain folder name: use letters, digits, "
                          "'-', '_' and '.' (not '.' or '..'), e.g. my-sweep")
    return Sweep(name=name, base=base,
                 settings=tuple(f"{k}={json.dumps(v)}" for k, v in settings.items()),
                 grid=tuple((k, tuple(v)) for k, v in grid.items()))


def mapping(raw, path: Path, section: str) -> dict:
    """A section of dotted config keys: a mapping whose keys exist in a run config."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep file '{path}': {section} must map config keys to values, e.g. train.l1: [0, 0.001]")
    known = set(valid_paths())
    for key in raw:
        if str(key) not in known:
            raise ConfigError(f"sweep file '{path}': {section}: {unknown_key_message(str(key))}")
    return {str(k): v for k, v in raw.items()}


def point_label(point: dict) -> str:
    """'l1=0.0003 hidden=[100] seed=1': each key by its shortest ending that no other key of the point
    shares (train.seed and layout.sim.seed: 'train.seed=1 sim.seed=0'), and its value."""
    return " ".join(f"{short_name(k, point)}={value_label(v)}" for k, v in point.items())


def value_label(value) -> str:
    """A grid value as the labels show it: JSON, but a whole model in short words ('mlp 100 sigmoid',
    'cnn c6-max2-c16-max2-f-d120-d84 relu': conv channels, pool kind and size, flatten, dense units)."""
    if isinstance(value, dict) and ("hidden" in value or "layers" in value):
        if value.get("layers") is not None:
            parts = ["cnn", "-".join(short_layer(layer) for layer in parse_layers(value["layers"]))]
        else:
            parts = ["mlp", "-".join(map(str, value.get("hidden") or []))]
        return " ".join(parts + ([str(value["activation"])] if "activation" in value else []))
    return json.dumps(value, separators=(",", ":"))


def short_layer(layer) -> str:
    """'c6', 'max2', 'f', 'd120'."""
    words = describe(layer).split("@")[0].split()  # 'conv 6', 'max pool 2', 'flatten', 'dense 120'
    return {"conv": "c", "dense": "d"}.get(words[0], words[0]) + words[-1] if len(words) > 1 else "f"


def short_name(key: str, keys) -> str:
    """The last parts of a dotted key, as few as tell it from the other keys."""
    parts = key.split(".")
    for n in range(1, len(parts) + 1):
        ending = ".".join(parts[-n:])
        if not any(other != key and (other == ending or other.endswith("." + ending)) for other in keys):
            return ending
    return key


def point_configs(sweep: Sweep, extra: tuple[str, ...], data_dir: str | None) -> list[RunConfig]:
    """Every point's RunConfig (named <sweep>_<id>), validated before anything runs; a bad value names
    its point."""
    configs = []
    for i, point in enumerate(sweep.points()):
        values = tuple(f"{k}={json.dumps(v)}" for k, v in point.items())
        try:
            cfg = load_config(sweep.base, sweep.settings + values + extra + (f"name={sweep.name}_{i:02d}",))
        except ConfigError as e:
            raise ConfigError(f"sweep point {i} ({point_label(point)}): {e}") from None
        configs.append(with_data_dir(cfg, data_dir))
    return configs
