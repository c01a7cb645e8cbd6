"""The shipped examples are what `scripts/run.sh` serves: every one must be discovered."""

from __future__ import annotations

from pathlib import Path

from reflow_microsandbox.registry import ActorRegistry


def test_every_example_script_is_discovered_without_problems(repo_root: Path) -> None:
    registry = ActorRegistry([str(repo_root / "examples")], allow_inline=False)
    registry.discover()
    assert registry.problems == []
    scripts = sorted(p for p in (repo_root / "examples").rglob("*") if p.suffix in {".py", ".js"})
    assert len(registry.all()) == len(scripts)
