"""A valid non-default value for every key of microsandbox.yaml, for tests that set each
key through one of its sources (environment variable, role variable) and read it back."""

from __future__ import annotations

from typing import Any

from reflow_microsandbox.config_keys import Key


def other_value(key: Key) -> tuple[str, Any]:
    """A valid value other than the default: as an environment variable, and parsed."""
    bounds = dict(key.limits)
    if key.kind == "bool":
        return ("false", False) if key.default else ("true", True)
    if key.kind in ("int", "float"):
        step = 1 if "le" not in bounds or key.default + 1 <= bounds["le"] else -1
        if "lt" in bounds and key.default + 1 >= bounds["lt"]:
            step = -1
        value = key.default + step
        return str(value), value
    if key.kind == "choice":
        choice = next(c for c in key.choices if c != key.default)
        return choice, choice
    if key.kind == "list":
        return "/srv/a, /srv/b", ["/srv/a", "/srv/b"]
    if key.name == "server.host":
        return "::1", "::1"
    return "/srv/env-value", "/srv/env-value"
