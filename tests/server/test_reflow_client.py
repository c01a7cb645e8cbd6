"""A client that behaves exactly as Reflow's runs actors end to end."""

from __future__ import annotations

from pathlib import Path

from reflow_microsandbox.config import parse_config
from reflow_microsandbox.server import Server

from .clients import ReflowClient
from .conftest import StartServer, config_data, make_config, ws_url


async def test_reflow_client_runs_an_actor_with_reflows_exact_params(server: Server) -> None:
    async with ReflowClient(ws_url(server)) as client:
        reply = await client.process("echo", {"data": {"input": 42, "tags": ["a", "b"]}})
        assert reply.error is None
        assert reply.outputs == {"out": {"input": 42, "tags": ["a", "b"]}}
        assert client.ignored_binary_frames == 0
        assert client.dropped_pushes == 0


async def test_pushes_carry_all_four_fields_in_order_before_the_response(server: Server) -> None:
    async with ReflowClient(ws_url(server)) as client:
        reply = await client.process("pusher", {"count": 5})
        assert reply.error is None
        assert reply.outputs == {"done": True}
        assert [(p.port, p.data) for p in reply.pushes] == [("out", i) for i in range(5)]
        assert all(p.actor_id == "pusher" and p.timestamp > 1_600_000_000_000 for p in reply.pushes)
        timestamps = [p.timestamp for p in reply.pushes]
        assert timestamps == sorted(timestamps)
        # What the script printed arrives as a log notification with a plain-string param.
        assert any("pushed 5" in line for line in reply.logs)
        assert client.dropped_pushes == 0


async def test_minimal_params_from_load_tools_are_enough(server: Server) -> None:
    async with ReflowClient(ws_url(server)) as client:
        reply = await client.call("process", {"actor_id": "echo"})
    assert reply.error is None
    assert reply.outputs == {"out": None}


async def test_script_failure_is_an_error_with_its_kind_and_the_connection_keeps_serving(
    server: Server,
) -> None:
    async with ReflowClient(ws_url(server)) as client:
        failed = await client.process("failing")
        assert failed.error is not None
        assert -32099 <= failed.error["code"] <= -32000
        assert failed.error["data"]["kind"] == "script_error"
        assert "this actor always fails" in failed.error["message"] + str(failed.error["data"])
        ok = await client.process("echo", {"data": 1})
        assert ok.outputs == {"out": 1}


async def test_load_list_and_unload_answer_as_reflows_bridges_do(
    server: Server, scripts: Path
) -> None:
    (scripts / "later.py").write_text(
        '@actor({"component": "later"})\ndef process(context):\n    return {"late": True}\n'
    )
    async with ReflowClient(ws_url(server)) as client:
        listed = await client.call("list", {})
        assert "later" not in listed.raw["result"]["actors"]
        assert {"echo", "test_actor", "pusher"} <= set(listed.raw["result"]["actors"])

        loaded = await client.call("load", {"file_path": "later.py"})
        assert loaded.raw["result"]["success"] is True
        assert "error" not in loaded.raw["result"]
        assert (await client.process("later")).outputs == {"late": True}

        missing = await client.call("load", {"file_path": "nope.py"})
        assert missing.raw["result"]["success"] is False
        assert "nope.py" in missing.raw["result"]["error"]

        unloaded = await client.call("unload", {"actor_id": "later"})
        assert unloaded.raw["result"] == {"success": True}
        gone = await client.process("later")
        assert gone.error is not None and gone.error["data"]["kind"] == "not_found"


async def test_namespaces_come_from_sub_folders_and_state_keys_follow_them(
    start_server: StartServer, scripts: Path, tmp_path: Path, redis_url: str
) -> None:
    nested = scripts / "team" / "billing"
    nested.mkdir(parents=True)
    (nested / "sum.py").write_text(
        '@actor(name="adder")\nasync def process(context):\n'
        '    total = await context.get_state("total", 0) + context.get_input("n", 0)\n'
        '    await context.set_state("total", total)\n'
        '    return {"total": total}\n'
    )
    server = await start_server(make_config(scripts, tmp_path, redis_url))
    async with ReflowClient(ws_url(server)) as client:
        listed = await client.call("list", {})
        assert "team.billing.adder" in listed.raw["result"]["actors"]
        reply = await client.process("adder", {"n": 5}, namespace="team.billing")
        assert reply.outputs == {"total": 5}
        reply = await client.process("adder", {"n": 2}, namespace="team.billing")
        assert reply.outputs == {"total": 7}
    import redis.asyncio as aioredis

    redis = aioredis.from_url(redis_url)
    try:
        assert await redis.get("team.billing:adder:total") == b"7"
    finally:
        await redis.aclose()


async def test_inline_load_accepts_the_language_names_its_error_lists(
    start_server: StartServer, scripts: Path, tmp_path: Path, redis_url: str
) -> None:
    data = config_data(scripts, tmp_path, redis_url)
    data["scripts"]["allow_inline"] = True
    server = await start_server(parse_config(data))
    js = "module.exports = {process: async (context) => ({lang: 'js'})};\n"
    py = "def process(context):\n    return {'lang': 'py'}\n"
    async with ReflowClient(ws_url(server)) as client:
        for language, source, expected in (
            ("js", js, "js"), ("node", js, "js"), ("JavaScript", js, "js"), ("nodejs", js, "js"),
            ("py", py, "py"), ("python3", py, "py"),
        ):  # fmt: skip
            name = f"inline_{language.lower()}"
            loaded = await client.call(
                "load", {"source": source, "language": language, "name": name}
            )
            assert loaded.raw["result"]["success"] is True, (language, loaded.raw)
            assert (await client.process(name)).outputs == {"lang": expected}, language
        refused = await client.call("load", {"source": js, "language": "ruby", "name": "r"})
        assert refused.error is not None and refused.error["code"] == -32602
        assert "'ruby'" in refused.error["message"]
        assert "js" in refused.error["message"] and "javascript" in refused.error["message"]
