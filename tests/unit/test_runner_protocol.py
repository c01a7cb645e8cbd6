"""The runner protocol's decisions, driven by bytes (no sandbox, no event loop).

Routing frames to their call, dropping what arrives outside it, retiring a runner that
misbehaves between calls, output accounting, state-request checks, error kinds. The
property tests feed arbitrary, truncated and interleaved frames: nothing raises out of
the module, and every started call ends exactly once.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reflow_microsandbox.errors import StateError
from reflow_microsandbox.sandbox.runner_protocol import (
    STRAY_LIMIT,
    CallEnding,
    Finished,
    Log,
    Output,
    Phase,
    RunnerProtocol,
    StateRequest,
    Stray,
)
from reflow_microsandbox.vocabulary import ActorSource, CallContext

ACTOR = ActorSource(name="t", namespace="tests", language="python", source="", filename="t.py")
CONTEXT = CallContext(actor_id="t", namespace="tests", payload={"x": 1})


def frame(message: Any) -> bytes:
    body = (message if isinstance(message, str) else json.dumps(message)).encode(
        "utf-8", "surrogatepass"
    )
    return struct.pack(">I", len(body)) + body


def loaded(max_output: int = 10_000) -> RunnerProtocol:
    protocol = RunnerProtocol(max_output, "test runner")
    protocol.receive_data(frame({"type": "ready", "language": "python", "pid": 7}))
    protocol.send_load(ACTOR)
    protocol.receive_data(frame({"type": "loaded", "metadata": {"component": "t"}}))
    [ready, done] = protocol.events_received()
    assert isinstance(ready, Finished) and ready.value["pid"] == 7
    assert done == Finished(value={"component": "t"})
    protocol.data_to_send()
    return protocol


def start_call(protocol: RunnerProtocol) -> int:
    call = protocol.send_call(CONTEXT)
    sent = protocol.data_to_send()
    assert json.loads(sent[4:])["call"] == call
    return call


def finish(protocol: RunnerProtocol) -> list[object]:
    """Events up to the call's end (finishing it when the runner sent its last frame)."""
    events = protocol.events_received()
    if events and isinstance(events[-1], CallEnding):
        protocol.finish_call()
        events += protocol.events_received()
    return events


def test_frames_of_the_running_call_become_its_events() -> None:
    protocol = loaded()
    call = start_call(protocol)
    protocol.receive_data(
        frame({"type": "output", "call": call, "port": "p", "data": [1]})
        + frame({"type": "log", "call": call, "level": "info", "message": "hi"})
        + frame({"type": "result", "call": call, "outputs": {"out": 2}})
    )
    events = finish(protocol)
    assert events == [
        Output(call, "p", [1]),
        Log(call, "info", "hi"),
        CallEnding(call),
        Finished(value={"out": 2}),
    ]
    assert protocol.phase is Phase.IDLE and protocol.usable


def test_frames_of_an_earlier_call_are_dropped_and_counted_not_shown() -> None:
    protocol = loaded()
    first = start_call(protocol)
    protocol.receive_data(frame({"type": "result", "call": first, "outputs": {}}))
    finish(protocol)
    second = start_call(protocol)
    protocol.receive_data(
        frame({"type": "output", "call": first, "port": "leak", "data": 1})
        + frame({"type": "log", "call": first, "level": "info", "message": "LEAK"})
        + frame({"type": "log", "call": None, "level": "info", "message": "no call"})
        + frame({"type": "result", "call": first, "outputs": {"late": 1}})
        + frame({"type": "result", "call": second, "outputs": {"mine": 1}})
    )
    events = finish(protocol)
    assert [e for e in events if not isinstance(e, Stray)] == [
        CallEnding(second),
        Finished(value={"mine": 1}),
    ]
    assert [e.what for e in events if isinstance(e, Stray)] == ["output", "log", "log", "result"]
    assert protocol.stray_count == 4 and protocol.usable


def test_an_uncaught_exception_outside_a_call_retires_the_runner() -> None:
    protocol = loaded()
    protocol.receive_data(
        frame({"type": "uncaught", "call": None, "fatal": True, "error_type": "Error",
               "message": "late", "traceback": ""})
    )
    [stray] = protocol.events_received()
    assert isinstance(stray, Stray) and stray.what == "uncaught"
    assert not protocol.usable and "outside its call" in (protocol.retire_reason or "")


def test_a_fatal_uncaught_exception_ends_its_call_as_a_script_error_and_retires() -> None:
    protocol = loaded()
    call = start_call(protocol)
    protocol.receive_data(
        frame({"type": "uncaught", "call": call, "fatal": True, "error_type": "Error",
               "message": "thrown inside a timer callback", "traceback": "Error: ..."})
    )
    [ending, finished] = finish(protocol)
    assert ending == CallEnding(call)
    assert isinstance(finished, Finished) and finished.error is not None
    assert finished.error.kind == "script_error"
    assert finished.error.message == "Error: thrown inside a timer callback"
    assert protocol.retire_reason == "an uncaught exception"


def test_many_stray_frames_retire_the_runner() -> None:
    protocol = loaded()
    data = frame({"type": "log", "call": None, "level": "info", "message": "chatter"})
    for _ in range(STRAY_LIMIT):
        protocol.receive_data(data)
    assert protocol.usable
    protocol.receive_data(data)
    assert not protocol.usable and "frames outside its calls" in (protocol.retire_reason or "")


def test_a_call_that_left_processes_retires_the_runner_after_it_answers() -> None:
    protocol = loaded()
    call = start_call(protocol)
    protocol.receive_data(frame({"type": "result", "call": call, "lingering": True,
                                 "outputs": {"a": 1}}))
    assert finish(protocol)[-1] == Finished(value={"a": 1})
    assert protocol.retire_reason == "its call left processes running"


def test_output_is_counted_as_it_arrives_and_a_frame_over_the_cap_fails_before_its_body() -> None:
    protocol = loaded(max_output=1000)
    call = start_call(protocol)
    line = frame({"type": "log", "call": call, "level": "info", "message": "x" * 400})
    protocol.receive_data(line + line)
    assert len(protocol.events_received()) == 2
    # The header of a 600-byte frame is enough to know it would go over.
    big = frame({"type": "log", "call": call, "level": "info", "message": "y" * 600})
    protocol.receive_data(big[:4])
    [finished] = protocol.events_received()
    assert isinstance(finished, Finished) and finished.error is not None
    assert finished.error.kind == "output_too_large" and protocol.broken


def test_raw_capture_bytes_count_and_belong_to_the_running_call_only() -> None:
    protocol = loaded(max_output=1000)
    assert protocol.receive_capture(b"before any call\n") is None
    assert isinstance(protocol.events_received()[0], Stray)
    call = start_call(protocol)
    assert protocol.receive_capture(b"no newline") == Log(call, "info", "no newline")
    assert protocol.receive_capture(b"z" * 1000) is None
    [finished] = protocol.events_received()
    assert isinstance(finished, Finished) and finished.error is not None
    assert finished.error.kind == "output_too_large"


def test_state_requests_are_checked_before_the_store_sees_them() -> None:
    protocol = loaded()
    call = start_call(protocol)
    protocol.receive_data(
        frame({"type": "state", "call": call, "id": 1, "op": "get", "key": "k", "default": 0})
        + frame({"type": "state", "call": call, "id": 2, "op": "drop", "key": "k"})
        + frame({"type": "state", "call": call, "id": 3, "op": "increment", "key": "k",
                 "by": "one"})
    )
    [request] = protocol.events_received()
    assert request == StateRequest(call, 1, "get", "k", value=0)
    refusals = protocol.data_to_send()
    assert refusals.count(b'"ok":false') == 2
    protocol.answer_state(request, 41)
    assert json.loads(protocol.data_to_send()[4:]) == {
        "type": "state_result", "call": call, "id": 1, "ok": True, "value": 41,
    }
    protocol.receive_data(frame({"type": "result", "call": call, "outputs": {}}))
    finished = finish(protocol)[-1]
    assert isinstance(finished, Finished) and finished.error is not None
    assert finished.error.kind == "state_error"
    assert "unknown state operation 'drop'" in finished.error.message


def test_a_failed_store_fails_the_call_at_its_end() -> None:
    protocol = loaded()
    call = start_call(protocol)
    protocol.receive_data(frame({"type": "state", "call": call, "id": 1, "op": "set",
                                 "key": "k", "value": 1}))
    [request] = protocol.events_received()
    assert isinstance(request, StateRequest)
    protocol.fail_state(request, StateError("the store is down"))
    assert b"the store is down" in protocol.data_to_send()
    protocol.receive_data(frame({"type": "result", "call": call, "outputs": {}}))
    finished = finish(protocol)[-1]
    assert isinstance(finished, Finished) and finished.error is not None
    assert finished.error.message == "the store is down"


def test_runner_errors_map_to_kinds() -> None:
    for claimed, expected in [("memory", "memory"), ("state_error", "state_error"),
                              ("timeout", "script_error"), (None, "script_error")]:
        protocol = loaded()
        call = start_call(protocol)
        protocol.receive_data(frame({"type": "error", "call": call, "kind": claimed,
                                     "error_type": "E", "message": "m", "traceback": "tb"}))
        finished = finish(protocol)[-1]
        assert isinstance(finished, Finished) and finished.error is not None
        assert finished.error.kind == expected
        assert finished.error.details == {"type": "E", "message": "m", "traceback": "tb"}


def test_values_with_lone_surrogates_or_too_deep_fail_the_call_as_script_errors() -> None:
    for outputs, mentions in [
        ('{"t":"a\\ud800b"}', "lone surrogate (U+D800)"),
        ('{"t":' + "[" * 150 + "]" * 150 + "}", "nests deeper than 100 levels"),
    ]:
        protocol = loaded()
        call = start_call(protocol)
        protocol.receive_data(frame(f'{{"type":"result","call":{call},"outputs":{outputs}}}'))
        finished = finish(protocol)[-1]
        assert isinstance(finished, Finished) and finished.error is not None
        assert finished.error.kind == "script_error" and mentions in finished.error.message
    # A log line is cleaned instead: it is text for people.
    protocol = loaded()
    call = start_call(protocol)
    protocol.receive_data(frame(f'{{"type":"log","call":{call},"level":"info",'
                                '"message":"a\\ud800b"}'))
    [entry] = protocol.events_received()
    assert entry == Log(call, "info", "a?b")


def test_garbage_breaks_the_runner_and_ends_the_running_call_as_crashed() -> None:
    protocol = loaded()
    start_call(protocol)
    protocol.receive_data(b"\x00\x00\x00\x03{x}")
    [finished] = protocol.events_received()
    assert isinstance(finished, Finished) and finished.error is not None
    assert finished.error.kind == "crashed" and protocol.broken


# -- properties -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=8,
)
frame_types = st.sampled_from(
    ["output", "log", "state", "result", "error", "uncaught", "ready", "loaded", "bogus"]
)


@st.composite
def runner_frames(draw: st.DrawFn, call_ids: list[int]) -> bytes:
    message: dict[str, Any] = {"type": draw(frame_types)}
    message["call"] = draw(st.sampled_from([*call_ids, None, "x", 10**20]))
    for key in draw(st.lists(st.sampled_from(
        ["port", "data", "level", "message", "id", "op", "key", "value", "by", "outputs",
         "kind", "fatal", "lingering", "traceback", "metadata"]), max_size=6)):
        message[key] = draw(json_values)
    if draw(st.booleans()):
        message["id"] = draw(st.integers(0, 3))
        message["op"] = draw(st.sampled_from(["get", "set", "delete", "increment", "x"]))
        message["key"] = draw(st.text(max_size=3))
    return frame(message)


@settings(max_examples=800, deadline=None)
@given(data=st.data(), chunk=st.integers(1, 64), max_output=st.integers(50, 5000))
def test_any_byte_stream_ends_every_call_exactly_once_and_never_raises(
    data: st.DataObject, chunk: int, max_output: int
) -> None:
    protocol = loaded(max_output)
    for _ in range(data.draw(st.integers(1, 3))):
        if not protocol.usable and protocol.broken:
            break
        call = protocol.send_call(CONTEXT)
        protocol.data_to_send()
        stream = b"".join(data.draw(st.lists(runner_frames([call, call - 1]), max_size=8)))
        if data.draw(st.booleans()):
            stream += data.draw(st.binary(max_size=40))  # garbage, or a truncated frame
        if data.draw(st.booleans()):
            stream += frame({"type": "result", "call": call, "outputs": {}})
        finished = 0
        capture = data.draw(st.booleans())
        for start in range(0, len(stream), chunk):
            protocol.receive_data(stream[start : start + chunk])
            if capture:
                protocol.receive_capture(b"raw\n")
            for event in protocol.events_received():
                if isinstance(event, CallEnding):
                    protocol.finish_call()
                    continue
                if isinstance(event, StateRequest):
                    protocol.answer_state(event, data.draw(json_values))
                if isinstance(event, Finished):
                    finished += 1
            protocol.data_to_send()
        for event in protocol.events_received():
            finished += isinstance(event, Finished)
        if protocol.phase in (Phase.CALLING, Phase.ENDING):
            assert finished == 0
            protocol.abandon("timeout", "the test stopped waiting")
            finished += 1
        assert finished == 1, protocol.phase
        assert protocol.events_received() == []
