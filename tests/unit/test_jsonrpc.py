"""JSON-RPC 2.0 without I/O: parsing, validation, errors, batches, notifications, ids."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import BaseModel, StrictInt, StrictStr

from reflow_microsandbox import jsonrpc
from reflow_microsandbox.dispatch import Dispatcher
from reflow_microsandbox.errors import SandboxError
from reflow_microsandbox.jsonrpc import Request, RpcError


class EchoParams(BaseModel):
    text: StrictStr
    times: StrictInt = 1


class NoParams(BaseModel):
    pass


async def echo(params: EchoParams, ctx: list[str]) -> object:
    ctx.append(params.text)
    return {"echo": params.text * params.times}


async def fail_sandbox(params: NoParams, ctx: list[str]) -> object:
    raise SandboxError("timeout", "the call ran past 25 s", details={"limit_seconds": 25})


async def explode(params: NoParams, ctx: list[str]) -> object:
    raise KeyError("secret internal detail")


async def refuse(params: NoParams, ctx: list[str]) -> object:
    raise RpcError(-32010, "actor not found", {"kind": "not_found"})


def make_dispatcher(seen: list[tuple[str, str]] | None = None) -> Dispatcher[list[str]]:
    observer = None if seen is None else (lambda method, code: seen.append((method, code)))
    dispatcher: Dispatcher[list[str]] = Dispatcher(observer)
    dispatcher.register("echo", EchoParams, echo)
    dispatcher.register("fail_sandbox", NoParams, fail_sandbox)
    dispatcher.register("explode", NoParams, explode)
    dispatcher.register("refuse", NoParams, refuse)
    return dispatcher


async def answer(frame: str | bytes, dispatcher: Dispatcher[list[str]] | None = None) -> object:
    """What a transport would send back for one frame (None: nothing)."""
    dispatcher = dispatcher or make_dispatcher()
    parsed = jsonrpc.parse(frame)
    if isinstance(parsed, dict):
        return json.loads(jsonrpc.encode(parsed))
    if isinstance(parsed, Request):
        reply = await dispatcher.call(parsed, [])
        return None if reply is None else json.loads(jsonrpc.encode(reply))
    replies = await dispatcher.call_batch(parsed, [])
    return json.loads(jsonrpc.encode(replies)) if replies else None


def req(method: str, params: object = None, id_: object = "1") -> str:
    message: dict[str, object] = {"jsonrpc": "2.0", "method": method, "id": id_}
    if params is not None:
        message["params"] = params
    return json.dumps(message)


async def test_string_id_is_echoed_as_the_same_string_and_success_has_no_error_key() -> None:
    uuid = "3f0c6a3e-5b7d-4c1e-9d7a-2b8f1e0c4a11"
    reply = await answer(req("echo", {"text": "hi"}, uuid))
    assert reply == {"jsonrpc": "2.0", "id": uuid, "result": {"echo": "hi"}}


@pytest.mark.parametrize("id_", [7, 0, -3, 2.5, 12345678901234567890, None])
async def test_numeric_and_null_ids_are_echoed_exactly(id_: object) -> None:
    frame = req("echo", {"text": "x"}, id_)
    reply = await answer(frame)
    assert isinstance(reply, dict)
    assert reply["id"] == id_ and type(reply["id"]) is type(id_)
    # The exact text of the id survives (1 stays 1, not 1.0).
    assert f'"id":{json.dumps(id_)}' in jsonrpc.encode(
        {"jsonrpc": "2.0", "id": reply["id"], "result": None}
    )


@pytest.mark.parametrize(
    "frame",
    [b"{not json", b'{"jsonrpc": "2.0", "method": "echo", "id": 1', b"\xff\xfe{}", "", "NaN"],
)
async def test_unparseable_frames_get_parse_error_with_null_id(frame: bytes | str) -> None:
    reply = await answer(frame)
    assert isinstance(reply, dict)
    assert reply["id"] is None
    assert reply["error"]["code"] == -32700


async def test_nan_inside_params_is_a_parse_error() -> None:
    reply = await answer('{"jsonrpc":"2.0","method":"echo","params":{"text":NaN},"id":1}')
    assert isinstance(reply, dict) and reply["error"]["code"] == -32700


@pytest.mark.parametrize(
    ("message", "expected_id"),
    [
        ({"method": "echo", "id": 4}, 4),  # no jsonrpc member
        ({"jsonrpc": "1.0", "method": "echo", "id": 4}, 4),
        ({"jsonrpc": "2.0", "method": 5, "id": 4}, 4),
        ({"jsonrpc": "2.0", "method": "echo", "params": "text", "id": 4}, 4),
        ({"jsonrpc": "2.0", "method": "echo", "id": True}, None),  # bool is not a valid id
        ({"jsonrpc": "2.0", "method": "echo", "id": {"a": 1}}, None),
    ],
)
async def test_malformed_requests_get_invalid_request(
    message: dict[str, object], expected_id: object
) -> None:
    reply = await answer(json.dumps(message))
    assert isinstance(reply, dict)
    assert reply["error"]["code"] == -32600
    assert reply["id"] == expected_id


async def test_non_object_frame_is_an_invalid_request() -> None:
    reply = await answer("42")
    assert isinstance(reply, dict) and reply["error"]["code"] == -32600


async def test_unknown_method_is_method_not_found_naming_it() -> None:
    reply = await answer(req("nope"))
    assert isinstance(reply, dict)
    assert reply["error"]["code"] == -32601
    assert "nope" in reply["error"]["message"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"text": 5}, "text"),
        ({}, "text"),
        ({"text": "a", "times": "3"}, "times"),
        ({"text": "a", "times": 1.5}, "times"),
    ],
)
async def test_wrong_param_types_get_invalid_params_naming_the_field(
    params: dict[str, object], field: str
) -> None:
    reply = await answer(req("echo", params))
    assert isinstance(reply, dict)
    assert reply["error"]["code"] == -32602
    assert f"{field}:" in reply["error"]["message"]
    assert reply["error"]["data"]["fields"] == [field]


async def test_positional_params_are_refused_as_invalid_params() -> None:
    reply = await answer(req("echo", ["hi"]))
    assert isinstance(reply, dict) and reply["error"]["code"] == -32602
    assert "params" in reply["error"]["message"]


async def test_sandbox_failure_is_a_server_error_carrying_its_kind_and_details() -> None:
    reply = await answer(req("fail_sandbox"))
    assert isinstance(reply, dict)
    error = reply["error"]
    assert -32099 <= error["code"] <= -32000
    assert error["data"] == {"kind": "timeout", "limit_seconds": 25}
    assert error["message"] == "the call ran past 25 s"
    assert "result" not in reply


async def test_unexpected_exception_is_internal_error_without_leaking_details() -> None:
    reply = await answer(req("explode"))
    assert isinstance(reply, dict)
    assert reply["error"] == {"code": -32603, "message": "internal error"}


async def test_method_raised_rpc_error_is_answered_as_is() -> None:
    reply = await answer(req("refuse"))
    assert isinstance(reply, dict)
    assert reply["error"] == {
        "code": -32010,
        "message": "actor not found",
        "data": {"kind": "not_found"},
    }


async def test_notifications_run_but_get_no_reply_even_on_error() -> None:
    seen: list[str] = []
    dispatcher = make_dispatcher()
    parsed = jsonrpc.parse('{"jsonrpc":"2.0","method":"echo","params":{"text":"n"}}')
    assert isinstance(parsed, Request) and parsed.is_notification
    assert await dispatcher.call(parsed, seen) is None
    assert seen == ["n"]
    for frame in ('{"jsonrpc":"2.0","method":"nope"}', '{"jsonrpc":"2.0","method":"explode"}'):
        parsed = jsonrpc.parse(frame)
        assert isinstance(parsed, Request)
        assert await dispatcher.call(parsed, seen) is None


async def test_batch_answers_each_call_in_order_and_skips_notifications() -> None:
    frame = json.dumps(
        [
            {"jsonrpc": "2.0", "method": "echo", "params": {"text": "a"}, "id": "a"},
            {"jsonrpc": "2.0", "method": "echo", "params": {"text": "n"}},
            7,
            {"jsonrpc": "2.0", "method": "nope", "id": 3},
            {"jsonrpc": "2.0", "method": "echo", "params": {"text": "b", "times": 2}, "id": 2},
        ]
    )
    reply = await answer(frame)
    assert isinstance(reply, list)
    assert [(r["id"], r.get("result"), r.get("error", {}).get("code")) for r in reply] == [
        ("a", {"echo": "a"}, None),
        (None, None, -32600),
        (3, None, -32601),
        (2, {"echo": "bb"}, None),
    ]
    assert all("error" not in r for r in (reply[0], reply[3]))


async def test_empty_batch_is_one_invalid_request_and_all_notification_batch_gets_nothing() -> None:
    reply = await answer("[]")
    assert isinstance(reply, dict) and reply["error"]["code"] == -32600
    note = {"jsonrpc": "2.0", "method": "echo", "params": {"text": "x"}}
    assert await answer(json.dumps([note, note])) is None


async def test_batch_calls_run_concurrently() -> None:
    gate = asyncio.Event()
    both_started = asyncio.Event()
    started = 0

    async def wait(params: NoParams, ctx: list[str]) -> object:
        nonlocal started
        started += 1
        if started == 2:
            both_started.set()
        await gate.wait()
        return "done"

    dispatcher: Dispatcher[list[str]] = Dispatcher()
    dispatcher.register("wait", NoParams, wait)
    frame = json.dumps([{"jsonrpc": "2.0", "method": "wait", "id": i} for i in range(2)])
    parsed = jsonrpc.parse(frame)
    assert isinstance(parsed, list)
    batch = asyncio.create_task(dispatcher.call_batch(parsed, []))
    await asyncio.wait_for(both_started.wait(), 5)
    assert dispatcher.in_flight == 2
    assert not await dispatcher.wait_idle(0.01)
    gate.set()
    assert [r["result"] for r in await batch] == ["done", "done"]
    assert await dispatcher.wait_idle(1)


async def test_observer_counts_every_answer_by_method_and_code() -> None:
    seen: list[tuple[str, str]] = []
    dispatcher = make_dispatcher(seen)
    await answer(req("echo", {"text": "x"}), dispatcher)
    await answer(req("echo", {"text": 1}), dispatcher)
    await answer(req("whatever"), dispatcher)
    await answer(req("fail_sandbox"), dispatcher)
    assert seen == [
        ("echo", "ok"),
        ("echo", "-32602"),
        ("unknown", "-32601"),
        ("fail_sandbox", "-32001"),
    ]


def test_encoded_output_is_compact_strict_json() -> None:
    text = jsonrpc.encode({"jsonrpc": "2.0", "id": "é", "result": {"a": [1, 2]}})
    assert text == '{"jsonrpc":"2.0","id":"é","result":{"a":[1,2]}}'
    with pytest.raises(ValueError):
        jsonrpc.encode({"jsonrpc": "2.0", "id": 1, "result": float("nan")})
