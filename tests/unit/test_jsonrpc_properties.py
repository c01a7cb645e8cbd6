"""Properties of the JSON-RPC dispatcher and the JSON limits, over arbitrary inputs.

Whatever a client sends (bytes, text, any JSON value, batches, any nesting, lone
surrogates) and whatever a method returns or raises: nothing raises out of the
dispatcher, every request with an id gets exactly one answer, and every answer is
valid JSON-RPC 2.0 that encodes to valid UTF-8.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from reflow_microsandbox import jsonrpc
from reflow_microsandbox.dispatch import Dispatcher
from reflow_microsandbox.errors import SandboxError
from reflow_microsandbox.jsonlimits import MAX_MESSAGE_DEPTH, lone_surrogate, nesting_exceeds
from reflow_microsandbox.jsonrpc import Request, RpcError

# Text with the characters that matter to a JSON scanner, and lone surrogates.
tricky_text = st.text(
    alphabet=st.sampled_from(['"', "\\", "[", "]", "{", "}", "a", "é", "\ud800", "\udc00", "😀"]),
    max_size=8,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | tricky_text,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(tricky_text, children, max_size=3),
    max_leaves=12,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(item) for item in value.values()), default=0)
    return 0


def nested(value: Any, levels: int, kind: str) -> Any:
    for _ in range(levels):
        value = [value] if kind == "list" else {"k": value}
    return value


@settings(max_examples=400, deadline=None)
@given(
    value=json_values,
    levels=st.integers(0, 140),
    kind=st.sampled_from(["list", "dict"]),
    limit=st.integers(0, 130),
)
def test_nesting_exceeds_agrees_with_the_parsed_depth(
    value: Any, levels: int, kind: str, limit: int
) -> None:
    deep = nested(value, levels, kind)
    text = json.dumps(deep, ensure_ascii=False)
    assert nesting_exceeds(text, limit) == (depth(deep) > limit)
    data = text.encode("utf-8", "surrogatepass")
    assert nesting_exceeds(data, limit) == (depth(deep) > limit)


class _Echo(BaseModel):
    model_config = ConfigDict(extra="allow")


def make_dispatcher() -> Dispatcher[None]:
    dispatcher: Dispatcher[None] = Dispatcher()

    async def echo(params: _Echo, ctx: None) -> Any:
        return params.model_extra

    async def crash(params: _Echo, ctx: None) -> Any:
        raise RuntimeError("a bug in a method")

    async def refuse(params: _Echo, ctx: None) -> Any:
        raise RpcError(-32099, "refused", {"why": "because"})

    async def sandbox(params: _Echo, ctx: None) -> Any:
        raise SandboxError("timeout", "too slow")

    async def bad_result(params: _Echo, ctx: None) -> Any:
        return {"text": "x\ud800", "nan": float("nan")}

    for name, handler in [("echo", echo), ("crash", crash), ("refuse", refuse),
                          ("sandbox", sandbox), ("bad_result", bad_result)]:
        dispatcher.register(name, _Echo, handler)
    return dispatcher


request_objects = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "2.0", "1.0"]),
     "method": st.sampled_from(["echo", "crash", "refuse", "sandbox", "bad_result", "nope"])},
    optional={
        "id": st.none() | st.integers() | tricky_text | st.booleans(),
        "params": st.dictionaries(tricky_text, json_values, max_size=3) | json_values,
    },
)
frames = st.one_of(
    request_objects.map(lambda r: json.dumps(r, ensure_ascii=False)),
    st.lists(request_objects | json_values, max_size=4).map(lambda b: json.dumps(b)),
    json_values.map(json.dumps),
    st.builds(lambda n, r: "[" * n + json.dumps(r) + "]" * n, st.integers(0, 3000),
              request_objects),
    st.text(max_size=30),
    st.binary(max_size=30),
)


def assert_valid_response(response: Any) -> None:
    assert isinstance(response, dict) and response["jsonrpc"] == "2.0"
    assert "id" in response
    assert ("result" in response) != ("error" in response)
    if "error" in response:
        assert isinstance(response["error"]["code"], int)
        assert isinstance(response["error"]["message"], str)


@settings(max_examples=1500, deadline=None)
@given(frame=frames)
async def test_every_request_gets_one_valid_answer_and_nothing_raises(frame: str | bytes) -> None:
    dispatcher = make_dispatcher()
    parsed = jsonrpc.parse(frame)
    expected_ids: list[Any] = []
    if isinstance(parsed, dict):
        replies: list[Any] = [parsed]
    elif isinstance(parsed, Request):
        if not parsed.is_notification:
            expected_ids.append(parsed.id)
        reply = await dispatcher.call(parsed, None)
        replies = [] if reply is None else [reply]
    else:
        expected_ids = [
            item.id for item in parsed if isinstance(item, Request) and not item.is_notification
        ]
        replies = await dispatcher.call_batch(parsed, None)
    for reply in replies:
        encoded = jsonrpc.encode_bytes(reply)
        assert encoded is not None
        decoded = json.loads(encoded.decode("utf-8"))  # valid UTF-8, valid JSON
        assert_valid_response(decoded)
        assert not nesting_exceeds(encoded, MAX_MESSAGE_DEPTH)
    answered = [reply["id"] for reply in replies if reply.get("id") is not None]
    for id_ in expected_ids:
        if id_ is not None and lone_surrogate(id_) is None:
            assert id_ in answered


def test_a_response_that_cannot_be_encoded_becomes_an_internal_error_for_its_id() -> None:
    data = jsonrpc.encode_bytes({"jsonrpc": "2.0", "id": 3, "result": {"t": "x\ud800"}})
    assert data is not None
    reply = json.loads(data)
    assert reply["id"] == 3 and reply["error"]["code"] == jsonrpc.INTERNAL_ERROR
    assert jsonrpc.encode_bytes(jsonrpc.notification("log", "x\ud800")) is None
    batch = jsonrpc.encode_bytes([
        {"jsonrpc": "2.0", "id": 1, "result": 1},
        {"jsonrpc": "2.0", "id": 2, "result": float("nan")},
    ])
    assert batch is not None
    assert [r.get("result", r.get("error", {}).get("code")) for r in json.loads(batch)] == [
        1, jsonrpc.INTERNAL_ERROR,
    ]
