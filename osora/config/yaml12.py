"""Params files read as YAML 1.2, the YAML that DVC writes.

`dvc exp run -S file:key=value` rewrites a whole params file with ruamel.yaml, which speaks
YAML 1.2 and so leaves `1:1` and `yes` unquoted: in 1.2 they are strings. PyYAML's safe
loader speaks YAML 1.1, where `1:1` is the base-60 integer 61, `2:1` is 121 and `yes` is True,
so an aspect-ratio list came back as numbers after the first `-S`. This loader is PyYAML's
safe loader with the 1.2 core schema's booleans, integers and floats instead of 1.1's.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class Yaml12Loader(yaml.SafeLoader):
    """yaml.SafeLoader with the YAML 1.2 core schema's implicit scalars."""


# PyYAML keeps resolvers per first character; drop 1.1's bool/int/float ones, add 1.2's
Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
                           "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"))
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"))


def _int(loader: Yaml12Loader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    return int(text, 16) if text.startswith("0x") else int(text, 10)


Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _int)


def load_yaml12(text: str) -> Any:
    """`text` parsed as YAML 1.2 (core schema)."""
    return yaml.load(text, Loader=Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)
