"""Config files: YAML and --set overrides read into the validated RunConfig of layout/core/config.py,
and a RunConfig written back as YAML.

This is the only module that reads or writes config YAML (with layout/core/strict_yaml.py, its
loader). Every field's rules (range, choices) live in its metadata in config.py, so the validator, the
error messages and the README all read the same source.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from layout.core import strict_yaml
from layout.core.config import WHOLE_SECTION, ModelConfig, RunConfig
from layout.core.config_values import coerce, excerpt
from layout.core.errors import ConfigError
from layout.core.layers import INPUT_SHAPE, check_shapes
from layout.core.plain import join, to_plain

# ---------------------------------------------------------------------------------------------
# Loading

FIXED_SIZE = ("mnist", "fashion-mnist", "mnist-sample")  # datasets of 1 x 28 x 28 images


@dataclass(frozen=True)
class ConfigFile:
    """A config as read from its file: the validated RunConfig, and notes for the user (one line each)."""

    config: RunConfig
    notes: tuple[str, ...] = ()


def read_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> ConfigFile:
    """Read a YAML config, apply `section.key=value` overrides, validate; with a note when the file
    sets nothing (every value then takes its default)."""
    path = Path(path)
    raw = read_yaml_mapping(path)
    notes = (f"{path} sets nothing: every value takes its default (the README lists them)",) if not raw else ()
    raw.setdefault("name", path.stem)
    for text in overrides:
        apply_override(raw, text)
    return ConfigFile(build(RunConfig, raw, ""), notes)


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """read_config's RunConfig."""
    return read_config(path, overrides).config


def with_data_dir(cfg: RunConfig, data_dir: str | None) -> RunConfig:
    """cfg with `--data-dir`, when given, as data.dir."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=data_dir)) if data_dir else cfg


def read_yaml_mapping(path: Path) -> dict:
    """The top-level mapping of a YAML file; an empty file is an empty mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' not found: check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file '{path}': {e}") from None
    try:
        raw = strict_yaml.load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file '{path}' is not valid YAML{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must be a mapping of sections (data:, model:, train:), "
                          f"not a {type(raw).__name__}")
    return raw


def apply_override(raw: dict, text: str) -> None:
    """Apply one `section.key=value` override to a raw config mapping (value parsed as YAML); the model
    section, given a mapping (a sweep's grid of whole networks: model={hidden: [100]}), is replaced by it."""
    dotted, sep, value_text = text.partition("=")
    keys = dotted.strip().split(".")
    if not sep or not all(keys):
        raise ConfigError(f"--set {excerpt(text)} is not of the form section.key=value (e.g. train.epochs=5)")
    try:
        value = strict_yaml.load(value_text) if value_text.strip() else None
    except strict_yaml.StrictLoadError as e:
        raise ConfigError(f"--set {excerpt(text)}: {e.problem}") from None
    except yaml.YAMLError:
        value = value_text  # not YAML: the text itself
    if dotted.strip() in sections() and not (dotted.strip() == WHOLE_SECTION and isinstance(value, dict)):
        raise ConfigError(f"--set {excerpt(text)}: {dotted.strip()!r} is a section: set one key at a time, e.g. "
                          f"--set {next(p for p in valid_paths() if p.startswith(dotted.strip() + '.'))}=...")
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {excerpt(text)}: {'.'.join(keys[:depth + 1])!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def build(cls: type, raw: Any, path: str) -> Any:
    """Validate a raw mapping against dataclass `cls` and construct it; `path` is its dotted location."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'the config'} must be a mapping of keys to values, "
                          f"got {type(raw).__name__} {excerpt(raw)}")
    names = [f.name for f in fields(cls)]
    for key in raw:
        if key not in names:
            raise ConfigError(unknown_key_message(join(path, str(key))))
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        where = join(path, f.name)
        if is_dataclass(hints[f.name]):
            values[f.name] = build(hints[f.name], raw[f.name], where)
        elif "parse" in f.metadata:
            values[f.name] = None if raw[f.name] is None else f.metadata["parse"](raw[f.name], where)
        else:
            values[f.name] = coerce(raw[f.name], hints[f.name], where, f.metadata)
    if cls is ModelConfig and {"hidden", "layers"} <= set(raw) and raw["layers"] is not None:
        raise ConfigError("model sets both hidden and layers: give one (layers describes the whole network)")
    built = cls(**values)
    if cls is RunConfig and built.model.layers is not None and built.data.dataset in FIXED_SIZE:
        check_shapes(built.model.layers, "model.layers", INPUT_SHAPE)  # the user's own data: before training
    return built


def valid_paths(cls: type = RunConfig, path: str = "") -> list[str]:
    """Every dotted key a config may set, e.g. 'train.learning_rate'."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        where = join(path, f.name)
        out.append(where)
        if is_dataclass(hints[f.name]):
            out.extend(valid_paths(hints[f.name], where))
    return out


def sections(cls: type = RunConfig) -> set[str]:
    """Every dotted section of a config, e.g. 'train', 'layout.forces.euclid'."""
    return {p.rpartition(".")[0] for p in valid_paths(cls)} - {""}


def unknown_key_message(dotted: str) -> str:
    """'unknown key ...' with the closest valid key: same name in another section, else the nearest spelling."""
    paths = valid_paths()
    section, _, leaf = dotted.rpartition(".")
    same_leaf = [p for p in paths if p.rpartition(".")[2] == leaf]
    siblings = [p for p in paths if p.rpartition(".")[0] == section]
    close = (same_leaf
             or difflib.get_close_matches(dotted, siblings, n=1, cutoff=0.6)
             or difflib.get_close_matches(dotted, paths, n=1, cutoff=0.6))
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys here: {', '.join(siblings) or 'none'}"
    return f"unknown key {excerpt(dotted)}: {hint}"


# ---------------------------------------------------------------------------------------------
# Writing


def config_to_yaml(cfg: RunConfig) -> str:
    """The resolved config, every default spelled out, as YAML that load_config reads back unchanged (with
    model.layers, model.hidden is left out: the layers describe the network)."""
    plain = to_plain(cfg)
    if plain["model"]["layers"] is None:
        del plain["model"]["layers"]
    else:
        del plain["model"]["hidden"]
    return yaml.safe_dump(plain, sort_keys=False, default_flow_style=False)
