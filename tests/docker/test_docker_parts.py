"""The Docker backend's engine-free parts: the attach-stream demuxer, the end-of-call marker
scanner and the owner rule.

These need no engine, so they run everywhere (the other files in this folder skip without one).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from reflow_microsandbox.sandbox.docker.attach import (
    STDERR,
    STDOUT,
    DemuxError,
    EndMarkerScanner,
    StdStreamDemuxer,
    end_marker,
)
from reflow_microsandbox.sandbox.docker.owner import (
    OWNER_BOOT,
    OWNER_PID,
    OWNER_START,
    Owner,
    process_start_time,
)


def chunk(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def test_demuxer_separates_stdout_from_stderr_in_order() -> None:
    demuxer = StdStreamDemuxer()
    data = chunk(STDOUT, b"frame-1") + chunk(STDERR, b"warning") + chunk(STDOUT, b"frame-2")
    assert demuxer.feed(data) == [(STDOUT, b"frame-1"), (STDERR, b"warning"), (STDOUT, b"frame-2")]
    assert demuxer.pending == 0


def test_demuxer_reassembles_chunks_split_at_every_byte() -> None:
    demuxer = StdStreamDemuxer()
    data = chunk(STDOUT, b"hello") + chunk(STDOUT, b"") + chunk(STDOUT, b"x" * 70000)
    got: list[tuple[int, bytes]] = []
    for index in range(0, len(data), 7):
        got += demuxer.feed(data[index : index + 7])
    assert got == [(STDOUT, b"hello"), (STDOUT, b""), (STDOUT, b"x" * 70000)]


def test_demuxer_refuses_a_stream_that_is_not_multiplexed() -> None:
    demuxer = StdStreamDemuxer()
    with pytest.raises(DemuxError):
        demuxer.feed(b'{"type": "ready"}')


def scan_in_pieces(data: bytes, size: int) -> list[bytes | int]:
    """Feed ``data`` in pieces of ``size`` bytes; join adjacent text parts."""
    scanner = EndMarkerScanner()
    parts: list[bytes | int] = []
    for index in range(0, len(data), size):
        for part in scanner.feed(data[index : index + size]):
            if isinstance(part, bytes) and parts and isinstance(parts[-1], bytes):
                parts[-1] += part
            else:
                parts.append(part)
    return parts


def test_end_markers_are_cut_out_of_stderr_and_split_it_by_call() -> None:
    data = b"raw 1\n" + end_marker(1) + end_marker(2) + b"raw \x00 3\n" + end_marker(3)
    assert scan_in_pieces(data, len(data)) == [b"raw 1\n", 1, 2, b"raw \x00 3\n", 3]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13])
def test_end_marker_split_across_chunks_is_still_found(size: int) -> None:
    data = b"before\n" + end_marker(12345) + b"after\x00msb\n" + end_marker(6)
    assert scan_in_pieces(data, size) == [b"before\n", 12345, b"after\x00msb\n", 6]


def test_text_that_only_starts_like_a_marker_is_kept_as_text() -> None:
    scanner = EndMarkerScanner()
    assert scanner.feed(b"x\x00msb-end:") == [b"x"]  # held: it may still become a marker
    assert scanner.feed(b"oops\n") == [b"\x00msb-end:oops\n"]
    assert scanner.feed(b"\x00msb-end:7\x00 no\n") == [b"\x00msb-end:7\x00 no\n"]


def test_owner_of_a_pid_that_no_longer_runs_is_dead() -> None:
    me = Owner.current()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    labels = Owner(me.host, me.boot, gone.pid, "12345").labels()
    assert me.is_dead_owner(labels)


def test_owner_whose_pid_was_reused_by_another_process_is_dead() -> None:
    me = Owner.current()
    labels = me.labels() | {OWNER_PID: "1", "io.reflow.microsandbox.owner": "x/1/1"}
    labels[OWNER_START] = "not-the-start-time-of-pid-1"
    assert me.is_dead_owner(labels)


def test_owner_that_still_runs_is_not_reaped() -> None:
    me = Owner.current()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = process_start_time(other.pid)
        assert start is not None
        assert not me.is_dead_owner(Owner(me.host, me.boot, other.pid, start).labels())
    finally:
        other.kill()
        other.wait()


def test_owner_on_another_host_or_ourselves_is_never_reaped() -> None:
    me = Owner.current()
    assert not me.is_dead_owner(me.labels())
    elsewhere = Owner("another-host", me.boot, 999_999_999, "1").labels()
    assert not me.is_dead_owner(elsewhere)


def test_owner_from_an_earlier_boot_is_dead() -> None:
    me = Owner.current()
    labels = Owner(me.host, "an-earlier-boot", os.getpid(), me.start).labels()
    labels[OWNER_BOOT] = "an-earlier-boot"
    assert me.is_dead_owner(labels)
