"""The error hierarchy: the tree drawn in ``errors``' docstring is the tree in the code,
and each family reaches a client as the JSON-RPC error it always did."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import reflow_microsandbox
from reflow_microsandbox import errors, jsonrpc
from reflow_microsandbox.errors import (
    CallError,
    MicroSandboxError,
    PoolError,
    SandboxError,
    StateError,
)

_ENTRY = re.compile(r"^(?P<indent> *)\* :exc:`(?P<name>\w+)`(?: \((?P<where>[^)]*)\))?")


def _all_modules() -> None:
    for info in pkgutil.walk_packages(reflow_microsandbox.__path__, "reflow_microsandbox."):
        if info.name.endswith("__main__") or ".runners." in info.name:
            continue  # the runners run inside sandboxes and import nothing of ours
        importlib.import_module(info.name)


def _subclasses(root: type) -> set[type]:
    found: set[type] = set()
    todo = [root]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("reflow_microsandbox.") and sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def _drawn_tree() -> dict[str, tuple[str | None, str]]:
    """name -> (parent name, where it is defined) as the docstring draws it."""
    tree: dict[str, tuple[str | None, str]] = {}
    stack: list[str] = []
    for line in (errors.__doc__ or "").splitlines():
        match = _ENTRY.match(line)
        if match is None:
            continue
        depth = len(match["indent"]) // 4
        del stack[depth:]
        tree[match["name"]] = (stack[-1] if stack else None, match["where"] or "")
        stack.append(match["name"])
    return tree


def test_the_docstring_draws_every_error_under_its_real_parent() -> None:
    _all_modules()
    tree = _drawn_tree()
    classes = {cls.__name__: cls for cls in _subclasses(MicroSandboxError)}
    classes[MicroSandboxError.__name__] = MicroSandboxError
    assert set(tree) == set(classes), "errors' docstring and the code disagree"
    for name, (parent, where) in tree.items():
        cls = classes[name]
        family = [base for base in cls.__bases__ if issubclass(base, MicroSandboxError)]
        assert [base.__name__ for base in family] == ([parent] if parent else []), name
        module = re.search(r"``([\w.]+)``", where)
        if where.startswith("here"):
            assert cls.__module__ == "reflow_microsandbox.errors", name
        elif module is not None:
            assert cls.__module__ == f"reflow_microsandbox.{module[1]}", name


def test_a_state_failure_is_not_a_sandbox_failure() -> None:
    failure = StateError("state store redis failed to read: timed out")
    assert isinstance(failure, CallError) and not isinstance(failure, SandboxError)
    assert failure.kind == "state_error" and not failure.destroys_sandbox
    refused = StateError("set_state('k'): not strict JSON", kind="script_error")
    assert refused.kind == "script_error" and not refused.destroys_sandbox


@pytest.mark.parametrize(
    ("error", "code", "kind"),
    [
        (StateError("the store is down"), -32008, "state_error"),
        (StateError("keys are strings", kind="script_error"), -32005, "script_error"),
        (PoolError("pool_exhausted", "no sandbox", details={"reason": "timeout"}), -32007,
         "pool_exhausted"),
        (PoolError("unavailable", "the server is shutting down"), -32009, "unavailable"),
        (SandboxError("memory", "out of memory"), -32002, "memory"),
    ],
)
def test_each_call_failure_reaches_the_client_as_the_error_of_its_kind(
    error: CallError, code: int, kind: str
) -> None:
    answer = jsonrpc.sandbox_rpc_error(error).to_object()
    assert answer["code"] == code and answer["message"] == error.message
    assert answer["data"] == {"kind": kind, **error.details}
