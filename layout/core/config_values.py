"""Checking one config value against its field's type and rules (range, choices, length), with an
error that names the key, the value and what would be valid. Used by layout/config.py."""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from typing import Any

from layout.core.errors import ConfigError

TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
FOLDER_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def coerce(value: Any, tp: Any, path: str, rules: typing.Mapping[str, Any]) -> Any:
    """Check one value against its annotated type and rules; return it in the field's type."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None:
            return None
        arms = [a for a in args if a is not type(None)]
        if set(arms) == {int, str}:
            return coerce_number_or_word(value, path, rules)
        tp = arms[0]
        args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        out = tuple(coerce_scalar(v, args[0], f"{path}[{i}]", value, path) for i, v in enumerate(items))
        check_sequence(out, path, rules)
        for item in out:
            check_scalar(item, path, rules, shown=list(items))
        return out
    out = coerce_scalar(value, tp, path, value, path)
    check_scalar(out, path, rules, shown=value)
    return out


def coerce_number_or_word(value: Any, path: str, rules: typing.Mapping[str, Any]) -> int | str:
    """An `int | str` option: an integer within the numeric rules, or one of the `choices` words."""
    if isinstance(value, str):
        check_scalar(value, path, {"choices": rules.get("choices", ())}, shown=value)
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        check_scalar(value, path, {k: v for k, v in rules.items() if k != "choices"}, shown=value)
        return value
    raise ConfigError(f"{path} = {excerpt(value)} has the wrong type: expected an integer or one of "
                      f"{', '.join(rules.get('choices', ()))}")


def coerce_scalar(value: Any, tp: type, where: str, shown: Any, path: str) -> Any:
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if not ok and tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 as a string
            return float(value)
        except ValueError:
            pass
    if not ok:
        expected = TYPE_NAMES[tp] if where == path else f"a list of {TYPE_NAMES[tp].split(' ', 1)[1]}s"
        raise ConfigError(f"{path} = {excerpt(shown)} has the wrong type: expected {expected}")
    return float(value) if tp is float else value


def check_sequence(items: tuple, path: str, rules: typing.Mapping[str, Any]) -> None:
    if len(items) < rules.get("min_len", 0):
        raise ConfigError(f"{path} = {excerpt(list(items))} is too short: give at least {rules['min_len']} values")
    if rules.get("unique") and len(set(items)) != len(items):
        raise ConfigError(f"{path} = {excerpt(list(items))} repeats a value: give each value once")


def check_scalar(value: Any, path: str, rules: typing.Mapping[str, Any], shown: Any) -> None:
    if rules.get("folder_name") and not is_folder_name(value):
        raise ConfigError(f"{path} = {excerpt(shown)} is not a plain folder name: use letters, digits, '-', '_' and '.' "
                          "(not '.' or '..'), e.g. my-run")
    choices = rules.get("choices")
    if choices is not None and value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{path} = {excerpt(shown)} is not valid: choose one of {', '.join(choices)}{hint}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        tests = {"gt": value > rules.get("gt", -float("inf")), "ge": value >= rules.get("ge", -float("inf")),
                 "lt": value < rules.get("lt", float("inf")), "le": value <= rules.get("le", float("inf"))}
        if not all(tests.values()) or math.isnan(value):
            raise ConfigError(f"{path} = {excerpt(shown)} is out of range: must be {describe_range(rules)}")


def describe_range(rules: typing.Mapping[str, Any]) -> str:
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return " and ".join(f"{symbols[k]} {rules[k]:g}" for k in symbols if k in rules)


def is_folder_name(value: str) -> bool:
    """Whether `value` names one folder, inside its parent (no separators, no '.' or '..')."""
    return bool(FOLDER_NAME.fullmatch(value)) and value not in (".", "..")


EXCERPT = 60  # characters of a value quoted in a message


def excerpt(value: Any) -> str:
    """repr(value), cut to EXCERPT characters: a message quotes what was wrong, never a megabyte of it."""
    text = repr(value)
    return text if len(text) <= EXCERPT else text[:EXCERPT - 4] + " ..."
