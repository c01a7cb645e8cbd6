"""Unknown ``MICROSANDBOX_*`` environment variables: named, with the key each probably meant.

:func:`config.env_overrides` applies the variables that name a key of microsandbox.yaml
and skips the rest, so a misspelled override (``MICROSANDBOX_POOL_PYTHON_MAX``) would
change nothing without a word. :func:`unknown_variables` finds them (sans-I/O: it reads
the mapping it is given); ``check-config`` and ``serve`` report each as a warning, never
a refusal, because deployment tooling sets helper variables of its own under the same
prefix (:data:`HELPER_VARIABLES`).

The known names come from :func:`config_keys.keys`, i.e. the config model, the single
source of the keys. The suggestion is :func:`difflib.get_close_matches` (the standard
library's Ratcliff/Obershelp similarity) on the names without the prefix.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass

from .config import ENV_PREFIX
from .config_keys import Key, keys

# Variables the project's own deployment files set under the prefix that are not config
# keys: docker-compose.yml's published ports and bind address, both stacks' dependency
# cache host path (turned into MICROSANDBOX_FUNCTIONS_DEPENDENCY_CACHE), and
# docker-stack.yml's replica count and actors folder. Never reported.
HELPER_VARIABLES = frozenset(
    {
        "MICROSANDBOX_ACTORS_DIR",
        "MICROSANDBOX_DEPENDENCY_CACHE",
        "MICROSANDBOX_HTTP_PORT",
        "MICROSANDBOX_LB_BIND",
        "MICROSANDBOX_LB_PORT",
        "MICROSANDBOX_REPLICAS",
        "MICROSANDBOX_WS_PORT",
    }
)

# difflib's similarity ratio (0..1) a known name needs to be suggested; 0.6 is its own
# default, and it finds SANDBOX_POOL_PYTHON_MAX_INSTANCES for POOL_PYTHON_MAX.
SUGGESTION_CUTOFF = 0.6


@dataclass(frozen=True)
class UnknownVariable:
    """An environment variable under the prefix that names no key.

    ``name`` is the variable (``MICROSANDBOX_POOL_PYTHON_MAX``); ``suggestion`` the key
    whose variable is closest, if any is close enough.
    """

    name: str
    suggestion: Key | None

    def message(self) -> str:
        """One line for a log or stderr: the variable, that it is ignored, the likely key."""
        text = f"unknown environment variable {self.name} is ignored (it names no config key)"
        if self.suggestion is not None:
            text += f"; did you mean {self.suggestion.env} ({self.suggestion.name})?"
        return text


def unknown_variables(environ: Mapping[str, str]) -> list[UnknownVariable]:
    """The ``MICROSANDBOX_*`` names in ``environ`` that are neither a config key's
    override nor a helper variable, sorted by name, each with its closest key or None.
    """
    by_suffix = {key.env.removeprefix(ENV_PREFIX): key for key in keys()}
    known = {key.env for key in by_suffix.values()} | HELPER_VARIABLES
    found = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        close = difflib.get_close_matches(
            name.removeprefix(ENV_PREFIX), list(by_suffix), n=1, cutoff=SUGGESTION_CUTOFF
        )
        found.append(UnknownVariable(name, by_suffix[close[0]] if close else None))
    return found
