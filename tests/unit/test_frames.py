"""The runner frame codec, driven directly: no process, no event loop."""

from __future__ import annotations

import struct

import pytest

from reflow_microsandbox.sandbox.frames import (
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    encode_frame,
)


def test_round_trip_of_one_message() -> None:
    message = {"type": "output", "port": "out", "data": {"text": "héllo", "n": [1, 2.5, None]}}
    assert FrameDecoder().messages(encode_frame(message)) == [message]


def test_frame_split_across_many_chunks_is_reassembled() -> None:
    data = encode_frame({"type": "log", "level": "info", "message": "x" * 1000})
    decoder = FrameDecoder()
    received = []
    for index in range(len(data)):
        received += decoder.messages(data[index : index + 1])
        if index < len(data) - 1:
            assert received == []
    assert received == [{"type": "log", "level": "info", "message": "x" * 1000}]
    assert decoder.buffered == 0


def test_many_frames_in_one_chunk_come_out_in_order() -> None:
    messages = [{"type": "output", "port": "p", "data": i} for i in range(500)]
    chunk = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    assert decoder.messages(chunk[:-3]) == messages[:-1]
    assert decoder.messages(chunk[-3:]) == messages[-1:]


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    decoder = FrameDecoder(max_frame_size=1024)
    small = encode_frame({"type": "log", "message": "fine"})
    header_only = struct.pack(">I", 10 * 1024 * 1024)
    decoder.feed(small + header_only)
    assert decoder.next_message() == {"type": "log", "message": "fine"}
    assert decoder.pending_frame_size() == 4 + 10 * 1024 * 1024
    with pytest.raises(FrameTooLarge) as raised:
        decoder.next_message()
    assert raised.value.size == 10 * 1024 * 1024
    with pytest.raises(FrameTooLarge):  # the stream stays broken
        decoder.next_message()


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"type": NaN}', b"[1, 2]", b'{"no_type": 1}', b"\xff\xfe"],
    ids=["garbage", "nan", "not-object", "no-type", "not-utf8"],
)
def test_invalid_body_is_a_frame_error(body: bytes) -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError):
        decoder.messages(struct.pack(">I", len(body)) + body)


def test_encoder_refuses_nan_and_infinity() -> None:
    with pytest.raises(ValueError):
        encode_frame({"type": "result", "outputs": {"x": float("nan")}})
    with pytest.raises(ValueError):
        encode_frame({"type": "result", "outputs": {"x": float("-inf")}})


def test_last_frame_size_counts_header_and_body() -> None:
    frame = encode_frame({"type": "result", "outputs": {}})
    decoder = FrameDecoder()
    decoder.feed(frame)
    assert decoder.next_message() is not None
    assert decoder.last_frame_size == len(frame)
