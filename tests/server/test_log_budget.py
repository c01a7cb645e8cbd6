"""The per-actor log budget (sandbox.max_log_chars_per_second_per_actor), end to end:
a Reflow-like client, a real server, real bubblewrap sandboxes.

An actor printing far more than its budget gets its call answered, a share of its lines
relayed as ``log`` notifications, one warning line saying the rest were dropped, and the
drop counted in the metrics; another actor's lines are relayed whole meanwhile. What
passes depends on time, so the budget (1,000 characters/s) is set so far below what the
actor prints (200,000 characters) that no machine prints slowly enough to pass it all.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .clients import ReflowClient
from .conftest import StartServer, make_config, ws_url

TALKER = """
@actor(name="talker")
def process(context):
    for i in range(context.get_input("lines", 2000)):
        print(str(i).rjust(99, "."))
    return {"done": True}
"""


def talker_config(scripts: Path, tmp_path: Path, redis_url: str, chars: int) -> Any:
    (scripts / "talker.py").write_text(TALKER)
    return make_config(
        scripts, tmp_path, redis_url, sandbox={"max_log_chars_per_second_per_actor": chars}
    )


def printed_lines(logs: list[str]) -> list[str]:
    """The talker's lines in its ``log`` notifications (the runner may batch several)."""
    prefix = "[talker] info: "
    entries = [entry[len(prefix) :] for entry in logs if entry.startswith(prefix)]
    return [line for entry in entries for line in entry.split("\n")]


def dropped(exposition: bytes) -> float:
    match = re.search(rb"^microsandbox_log_dropped_characters_total (\S+)$", exposition, re.M)
    assert match is not None, "the metric is missing"
    return float(match.group(1))


async def test_lines_over_the_budget_are_dropped_with_one_warning_and_counted(
    start_server: StartServer, scripts: Path, tmp_path: Path, redis_url: str
) -> None:
    server = await start_server(talker_config(scripts, tmp_path, redis_url, 1000))
    async with ReflowClient(ws_url(server)) as client:
        reply = await client.process("talker")
        assert reply.error is None and reply.outputs == {"done": True}
        relayed = printed_lines(reply.logs)
        warnings = [line for line in reply.logs if "max_log_chars_per_second_per_actor" in line]
        assert 1 <= len(relayed) < 2000
        assert relayed == [str(i).rjust(99, ".") for i in range(len(relayed))]  # a prefix
        assert len(warnings) == 1
        assert warnings[0].startswith("[talker] warn: log output over this actor's budget")
        assert dropped(server.metrics.exposition()) >= 99 * (2000 - len(relayed))
        # Another actor has a budget of its own: its printed line is relayed.
        other = await client.process("pusher", {"count": 1})
        assert any("pushed 1" in line for line in other.logs)


async def test_zero_relays_every_line(
    start_server: StartServer, scripts: Path, tmp_path: Path, redis_url: str
) -> None:
    server = await start_server(talker_config(scripts, tmp_path, redis_url, 0))
    async with ReflowClient(ws_url(server)) as client:
        reply = await client.process("talker")
    assert reply.error is None
    assert printed_lines(reply.logs) == [str(i).rjust(99, ".") for i in range(2000)]
    assert dropped(server.metrics.exposition()) == 0
