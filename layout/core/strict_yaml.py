"""YAML for config files and --set values: PyYAML's safe loader, made strict where YAML surprises users.

- No anchors or aliases: a config has no use for them, and nested aliases expand exponentially (a
  413-byte file of 8 nested aliases became a 358 MB value).
- No key twice in one mapping: a second `train:` block would silently replace the first.
- YAML 1.2's numbers, not 1.1's: `1:30` (base 60 in 1.1), `017` (octal) and `0x1F` stay strings, so
  a number field refuses them; `1e-3` is a number.
- At most MAX_NODES values in one document.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

MAX_NODES = 10_000  # values in one config; the largest shipped config has under 60
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"


class StrictLoadError(yaml.YAMLError):
    """A document the strict loader refuses; `problem` says why, `problem_mark` where."""

    def __init__(self, problem: str, mark: Any = None):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class StrictLoader(yaml.SafeLoader):
    nodes = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise StrictLoadError("anchors and aliases (&name, *name) are not allowed in a config: write the "
                                  "value out", self.peek_event().start_mark)
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise StrictLoadError("anchors and aliases (&name, *name) are not allowed in a config: write the "
                                  "value out", event.start_mark)
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise StrictLoadError(f"more than {MAX_NODES:,} values: a config is a few dozen", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # a list or mapping as a key: PyYAML's own constructor refuses it below
            if key in seen:
                raise StrictLoadError(f"key {key!r} appears twice (lines {seen[key] + 1} and "
                                      f"{key_node.start_mark.line + 1}): keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


# YAML 1.2 (core schema) numbers in place of YAML 1.1's
StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in (INT, FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
StrictLoader.add_implicit_resolver(INT, re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"), list("-+0123456789"))
StrictLoader.add_implicit_resolver(
    FLOAT, re.compile(r"^[-+]?(?:\.[0-9]+|(?:0|[1-9][0-9_]*)(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?$"
                      r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"), list("-+0123456789."))


def load(text: str) -> Any:
    """The one document in `text`, strictly (see the module docstring); raises yaml.YAMLError."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader)
