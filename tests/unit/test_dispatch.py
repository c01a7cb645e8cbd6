"""The whole-frame dispatcher (``Dispatcher.answer``) and the zstd reply policy.

A transport hands over the frame and sends what comes back: these tests pin that the
answer is the same JSON-RPC a client got when the transports parsed, ran and encoded
themselves (over arbitrary frames, with Hypothesis), that a frame arriving while the
server takes no new calls runs nothing and gets each id's ``unavailable`` error, and the
pure compression policy the WebSocket transport applies to replies.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_jsonrpc_properties import assert_valid_response, frames, make_dispatcher

from reflow_microsandbox import jsonrpc
from reflow_microsandbox.compression import (
    CompressionError,
    DecompressedTooLarge,
    compress_reply,
    inflate_frame,
    reply_threshold,
    zstd_compress,
)
from reflow_microsandbox.dispatch import Dispatcher
from reflow_microsandbox.jsonlimits import lone_surrogate
from reflow_microsandbox.jsonrpc import Request


async def ladder(dispatcher: Dispatcher[None], frame: str | bytes) -> Any:
    """What the transports did themselves before: parse, run, encode (decoded back)."""
    parsed = jsonrpc.parse(frame)
    reply: Any
    if isinstance(parsed, dict):
        reply = parsed
    elif isinstance(parsed, Request):
        reply = await dispatcher.call(parsed, None)
    else:
        reply = await dispatcher.call_batch(parsed, None) or None
    if reply is None:
        return None
    data = jsonrpc.encode_bytes(reply)
    return None if data is None else json.loads(data)


@settings(max_examples=800, deadline=None)
@given(frame=frames)
async def test_the_answer_to_a_frame_is_what_parse_run_and_encode_gave(frame: str | bytes) -> None:
    answer = await make_dispatcher().answer(frame, None)
    expected = await ladder(make_dispatcher(), frame)
    got = None if answer is None else json.loads(answer.decode("utf-8"))
    assert got == expected
    for reply in got if isinstance(got, list) else [got] if got is not None else []:
        assert_valid_response(reply)


@settings(max_examples=800, deadline=None)
@given(frame=frames)
async def test_a_refused_frame_runs_nothing_and_each_id_gets_unavailable(
    frame: str | bytes,
) -> None:
    seen: list[tuple[str, str]] = []
    dispatcher: Dispatcher[None] = make_dispatcher()
    dispatcher._observer = lambda method, code: seen.append((method, code))
    answer = await dispatcher.answer(frame, None, refuse=True)
    assert dispatcher.in_flight == 0
    assert all(method == "invalid" for method, _ in seen)  # no method ran
    parsed = jsonrpc.parse(frame)
    if isinstance(parsed, dict):  # the frame itself was unusable: its own error
        assert answer is not None and json.loads(answer) == json.loads(
            jsonrpc.encode_bytes(parsed) or b""
        )
        return
    items = [parsed] if isinstance(parsed, Request) else parsed
    owed = [item.id for item in items if isinstance(item, Request) and not item.is_notification]
    errors = [item for item in items if not isinstance(item, Request)]
    if not owed and not errors:
        assert answer is None
        return
    assert answer is not None
    got = json.loads(answer)
    replies = [got] if isinstance(parsed, Request) else got
    assert len(replies) == len(owed) + len(errors)
    for reply in replies:
        assert_valid_response(reply)
    unavailable = [r["id"] for r in replies if r["error"]["code"] == -32009]
    for reply in replies:
        if reply["error"]["code"] == -32009:
            assert reply["error"]["data"] == {"kind": "unavailable"}
            assert "shutting down" in reply["error"]["message"]
    for id_ in owed:  # an id that is not valid Unicode cannot be echoed (see jsonrpc)
        if lone_surrogate(id_) is None:
            assert id_ in unavailable


async def test_a_refused_call_keeps_its_id_and_a_notification_gets_nothing() -> None:
    dispatcher = make_dispatcher()
    answer = await dispatcher.answer('{"jsonrpc":"2.0","method":"echo","id":"a-1"}', None,
                                     refuse=True)  # fmt: skip
    assert answer is not None
    assert json.loads(answer)["id"] == "a-1"
    assert await dispatcher.answer('{"jsonrpc":"2.0","method":"echo"}', None, refuse=True) is None


def test_reject_answers_with_a_null_id_and_counts_the_frame() -> None:
    seen: list[tuple[str, str]] = []
    dispatcher: Dispatcher[None] = Dispatcher(lambda method, code: seen.append((method, code)))
    reply = json.loads(dispatcher.reject(jsonrpc.PARSE_ERROR, "parse error: corrupt zstd"))
    assert reply == {"jsonrpc": "2.0", "id": None,
                     "error": {"code": -32700, "message": "parse error: corrupt zstd"}}  # fmt: skip
    assert seen == [("invalid", "-32700")]


# -- the zstd reply policy -------------------------------------------------------------------


@given(size=st.integers(0, 10_000), opted_in=st.booleans(),
       threshold=st.none() | st.integers(1, 5_000))  # fmt: skip
def test_replies_are_compressed_only_for_a_client_that_opted_in_and_above_the_threshold(
    size: int, opted_in: bool, threshold: int | None
) -> None:
    expected = opted_in and threshold is not None and size > threshold
    assert compress_reply(size, opted_in, threshold) is expected


def test_the_threshold_is_off_unless_zstd_is_configured_with_a_positive_one() -> None:
    assert reply_threshold("zstd", 1024) == 1024
    assert reply_threshold("zstd", 0) is None
    assert reply_threshold("none", 1024) is None


def test_a_binary_frame_is_inflated_when_zstd_and_passed_as_is_otherwise() -> None:
    text = b'{"jsonrpc":"2.0","method":"list","id":1}'
    assert inflate_frame(text, 100) is text
    assert inflate_frame(zstd_compress(text), 100) == text
    try:
        inflate_frame(zstd_compress(text * 10), 100)
    except DecompressedTooLarge as error:
        assert error.max_size == 100
    else:
        raise AssertionError("a frame past the cap was inflated")
    try:
        inflate_frame(zstd_compress(text)[:-3], 100)
    except CompressionError as error:
        assert "zstd" in str(error)
    else:
        raise AssertionError("a truncated frame was inflated")
