"""Configs and other records as plain data: what YAML and JSON hold, what a record's differences are,
and a stable digest of it (the caches' keys)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields, is_dataclass
from typing import Any

from layout.core.config_values import excerpt


def to_plain(obj: Any) -> Any:
    """Dataclasses, dicts, tuples and lists as plain dicts and lists (YAML- and JSON-safe); an object with
    a `plain()` method (a model layer) as what it returns."""
    if hasattr(obj, "plain") and not isinstance(obj, type):
        return obj.plain()
    if is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def differences(theirs: Any, ours: Any, path: str) -> list[str]:
    """'layout.forces.euclid.strength = 0.0 there, 1.0 here' for every value that differs between two
    configs (or sections, as plain data or dataclasses), `path` their dotted location."""
    theirs, ours = to_plain(theirs), to_plain(ours)
    if isinstance(theirs, dict) and isinstance(ours, dict):
        return [line for key in sorted(set(theirs) | set(ours))
                for line in differences(theirs.get(key), ours.get(key), join(path, key))]
    return [] if theirs == ours else [f"{path} = {excerpt(theirs)} there, {excerpt(ours)} here"]


def fingerprint(obj: Any) -> str:
    """A stable hex digest of a dataclass (or plain data), independent of dict order."""
    text = json.dumps(to_plain(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
