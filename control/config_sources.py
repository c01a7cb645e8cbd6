"""Writes, or checks, every file that repeats the keys of ``microsandbox.yaml``.

The config model (:mod:`config`, flattened by :mod:`config_keys`) is the one source of
the keys. From it come

- ``microsandbox.example.yaml``, whole: every key with its default, its description as
  the comment above it;
- the generated blocks of the microsandbox role's ``defaults/main.yml`` and
  ``meta/argument_specs.yml`` (one variable per key), of ``templates/microsandbox.yaml.j2``
  (the file's keys, each from its variable) and of ``docs/provisioning.md`` (the table of
  the keys, their variables, environment variables, defaults and limits).

A generated block sits between a BEGIN and an END marker line (:data:`TAG`); the rest of
each file is written by hand and left as it is. Adding a key is one change: the field in
the model, then ``reflow-microsandbox config-sources --write``; ``--check`` (and
``tests/unit/test_config_sources.py``) fails with a diff while any file lags behind.
The renderers are pure (text in, text out); :func:`check` and :func:`write` read and
write the files under a repository root.
"""

from __future__ import annotations

import difflib
import json
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from .config_keys import NO_LOG, Key, Section, keys, walk
from .errors import MicroSandboxError

TAG = "config keys: generated from control/config.py by reflow-microsandbox config-sources --write"
WIDTH = 88

Style = Literal["whole", "yaml", "jinja", "markdown"]


class ConfigSourcesError(MicroSandboxError):
    """A file to generate into is missing, or lacks its BEGIN/END markers."""


def _summary(text: str) -> str:
    """The first sentence of a description."""
    match = re.match(r"(.+?\.)(\s|$)", text)
    return match.group(1) if match else text


def _limits(key: Key) -> str:
    """The key's bounds and choices in words: ``from 1 to 65535``, ``one of zstd, none``."""
    bounds = dict(key.limits)
    parts = []
    if "ge" in bounds and "le" in bounds:
        parts.append(f"from {bounds['ge']} to {bounds['le']}")
    else:
        words = {"ge": "at least", "gt": "above", "le": "at most", "lt": "below"}
        parts += [f"{word} {bounds[bound]}" for bound, word in words.items() if bound in bounds]
    if "pattern" in bounds:
        parts.append(f"matching {bounds['pattern']}")
    if key.choices:
        parts.append("one of " + ", ".join(key.choices))
    return " and ".join(parts)


def _comment(text: str, indent: str) -> list[str]:
    return [
        f"{indent}# {line}"
        for line in textwrap.wrap(text, WIDTH - len(indent) - 2, break_on_hyphens=False)
    ]


def _plain(value: Any) -> str:
    """A scalar as YAML writes it unquoted when that reads back the same, else JSON."""
    if isinstance(value, str):
        if re.fullmatch(r"[A-Za-z0-9_./@+-][A-Za-z0-9_./:@+-]*", value) and (
            yaml.safe_load(value) == value
        ):
            return value
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_plain(item) for item in value) + "]"
    return json.dumps(value)


def _block_value(value: Any, indent: str, scalar: Callable[[Any], str]) -> str:
    """`` value`` after ``key:``: inline, or a block list on the following lines."""
    if isinstance(value, list) and value:
        return "".join(f"\n{indent}  - {scalar(item)}" for item in value)
    return " " + (scalar(value) if not isinstance(value, list) else "[]")


# ---- microsandbox.example.yaml --------------------------------------------------------

EXAMPLE_HEADER = """\
---
# microsandbox.yaml: every key, with its default. Copy, keep what you change.
# Every key can also be set by an environment variable named after its path:
#   sandbox.memory_mb -> MICROSANDBOX_SANDBOX_MEMORY_MB, redis.url -> MICROSANDBOX_REDIS_URL,
#   sandbox.pool.python.min_instances -> MICROSANDBOX_SANDBOX_POOL_PYTHON_MIN_INSTANCES.
# Lists take a comma-separated value. Relative paths are resolved against this file's folder.
# Check a file with:  reflow-microsandbox check-config microsandbox.yaml
# Generated from the config model (control/config.py) by
# reflow-microsandbox config-sources --write: change the model, not this file.
"""


def render_example() -> str:
    """The whole example file: each key at its default, described above it."""
    lines = [EXAMPLE_HEADER.rstrip("\n")]
    for item in walk():
        indent = "  " * (len(item.path) - 1)
        if len(item.path) == 1:
            lines.append("")
        lines += _comment(item.description, indent)
        name = item.path[-1]
        if isinstance(item, Section):
            lines.append(f"{indent}{name}:")
            continue
        lines.append(f"{indent}{name}:" + _block_value(item.default, indent, _plain))
        lines += [f"{indent}# {name}: {json.dumps(example)}" for example in item.examples]
    return "\n".join(lines) + "\n"


# ---- the microsandbox role: defaults/main.yml and meta/argument_specs.yml -------------


def _role_text(key: Key, summary: bool, limits: bool = True) -> str:
    """What a role variable does: the key's description (or its first sentence), its
    limits, what empty means and the role's note."""
    text = _summary(key.description) if summary else key.description
    allowed = _limits(key)
    if limits and allowed:
        text += f" Allowed: {allowed}."
    if key.nullable and not key.role.note.startswith("Empty"):
        text += " Empty: null."
    if key.role.note:
        text += " " + key.role.note
    return text


def render_role_defaults() -> str:
    """The block of defaults/main.yml: one variable per key, by top-level section."""
    lines: list[str] = []
    for item in walk():
        if isinstance(item, Section):
            if len(item.path) == 1:
                title = f"# ---- microsandbox.yaml: {item.path[0]} "
                lines.append(title + "-" * max(3, WIDTH - len(title)))
            continue
        lines += _comment(f"{item.name}: {_role_text(item, summary=True, limits=False)}", "")
        lines.append(f"{item.variable}:" + _block_value(item.role_default, "", json.dumps))
    return "\n".join(lines) + "\n"


class _Dumper(yaml.SafeDumper):
    """Indents sequences under their key, as yamllint's default expects."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


_SPEC_TYPES = {"bool": "bool", "int": "int", "float": "float", "str": "str",
               "list": "list", "choice": "str"}  # fmt: skip


def render_argument_specs(indent: str = "      ") -> str:
    """The block of argument_specs.yml's ``options``: each key's variable, typed."""
    options: dict[str, dict[str, Any]] = {}
    for key in keys():
        spec: dict[str, Any] = {"type": _SPEC_TYPES[key.kind]}
        if key.kind == "list":
            spec["elements"] = "str"
        spec["default"] = key.role_default
        if key.choices:
            spec["choices"] = list(key.choices)
        if key.name in NO_LOG:
            spec["no_log"] = True
        spec["description"] = f"{key.name}: {_role_text(key, summary=True)}"
        options[key.variable] = spec
    text = yaml.dump(options, Dumper=_Dumper, sort_keys=False, width=WIDTH - 12, allow_unicode=True)
    return "".join(indent + line if line else line for line in text.splitlines(True))


# ---- templates/microsandbox.yaml.j2 --------------------------------------------------

# Keys whose template value is not their own variable: redis.url is built from the
# Redis host, port, db and credentials in the template's hand-written head.
TEMPLATE_SOURCES = {"redis.url": "_redis_url"}

_FILTERS = {"int": "{v} | int", "float": "{v} | float", "bool": "{v} | bool | to_json",
            "list": "{v} | list | to_json", "str": "{v} | to_json",
            "choice": "{v} | to_json"}  # fmt: skip


def render_template() -> str:
    """The block of the template: every key, its value from its role variable."""
    lines: list[str] = []
    for item in walk():
        indent = "  " * (len(item.path) - 1)
        name = item.path[-1]
        if isinstance(item, Section):
            if len(item.path) == 1 and lines:
                lines.append("")
            lines.append(f"{indent}{name}:")
            continue
        source = TEMPLATE_SOURCES.get(item.name, item.variable)
        if item.nullable:
            source = f"({source} or none)"
        lines.append(f"{indent}{name}: {{{{ {_FILTERS[item.kind].format(v=source)} }}}}")
    return "\n".join(lines) + "\n"


# ---- docs/provisioning.md -------------------------------------------------------------


def render_docs_table() -> str:
    """The operator guide's table of the keys."""
    lines = [
        "| Variable | microsandbox.yaml key, environment variable | Role default | What it does |",
        "|---|---|---|---|",
    ]
    for key in keys():
        default = _plain(key.role_default) if key.role_default != "" else '""'
        text = _role_text(key, summary=False).replace("|", "\\|")
        lines.append(f"| `{key.variable}` | `{key.name}`, `{key.env}` | `{default}` | {text} |")
    return "\n".join(lines) + "\n"


# ---- the files ------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A file holding config keys: its path under the repository, how its generated
    block is marked (``whole``: the file is generated) and the block's renderer."""

    path: str
    style: Style
    render: Callable[[], str]


SOURCES = (
    Source("microsandbox.example.yaml", "whole", render_example),
    Source("ansible/roles/microsandbox/defaults/main.yml", "yaml", render_role_defaults),
    Source("ansible/roles/microsandbox/meta/argument_specs.yml", "yaml", render_argument_specs),
    Source("templates/microsandbox.yaml.j2", "jinja", render_template),
    Source("docs/provisioning.md", "markdown", render_docs_table),
)

_MARKERS = {
    "yaml": ("# BEGIN {tag}", "# END config keys"),
    "jinja": ("{{# BEGIN {tag} #}}", "{{# END config keys #}}"),
    "markdown": ("<!-- BEGIN {tag} -->", "<!-- END config keys -->"),
}


def splice(text: str, style: Style, block: str, where: str = "the file") -> str:
    """``text`` with the lines between its BEGIN and END marker lines set to ``block``.

    Raises ConfigSourcesError when the markers are missing, repeated or out of order.
    """
    if style == "whole":
        return block
    begin, end = (marker.format(tag=TAG) for marker in _MARKERS[style])
    lines = text.splitlines(True)
    starts = [i for i, line in enumerate(lines) if line.strip() == begin]
    ends = [i for i, line in enumerate(lines) if line.strip() == end]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        raise ConfigSourcesError(
            f"{where}: needs exactly one line {begin!r} and, after it, one line {end!r} "
            "around the generated block"
        )
    return "".join(lines[: starts[0] + 1]) + block + "".join(lines[ends[0] :])


def expected(root: Path) -> dict[str, tuple[str, str]]:
    """Path -> (the file's text now, the text it should have), for every source.

    Raises ConfigSourcesError for a missing file or missing markers.
    """
    result: dict[str, tuple[str, str]] = {}
    for source in SOURCES:
        file = root / source.path
        try:
            current = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            if source.style != "whole":
                raise ConfigSourcesError(f"{file}: not found (is {root} the repository?)") from None
            current = ""
        except OSError as error:
            raise ConfigSourcesError(f"cannot read {file}: {error.strerror}") from None
        result[source.path] = (current, splice(current, source.style, source.render(), str(file)))
    return result


def check(root: Path) -> dict[str, str]:
    """Path -> unified diff (current -> generated) of every file that drifted."""
    return {
        path: "".join(
            difflib.unified_diff(
                current.splitlines(True), wanted.splitlines(True), f"a/{path}", f"b/{path}"
            )
        )
        for path, (current, wanted) in expected(root).items()
        if current != wanted
    }


def write(root: Path) -> list[str]:
    """Regenerate every file that drifted; returns their paths."""
    changed = []
    for path, (current, wanted) in expected(root).items():
        if current != wanted:
            (root / path).write_text(wanted, encoding="utf-8")
            changed.append(path)
    return changed
