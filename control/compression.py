"""zstd encode/decode with a hard cap on what decoding may produce (sans-I/O).

Everything that decompresses data from outside (WebSocket frames, state values)
goes through :func:`zstd_decompress`, which never holds more than about
``max_size`` bytes of output: a frame header that lies about its content size, a
frame without one, or many concatenated frames all end in
:class:`DecompressedTooLarge` as soon as the output passes the cap.
"""

from __future__ import annotations

import zstandard

from .errors import ProtocolError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
"""The first four bytes of every zstd frame (no JSON text starts with 0x28 0xB5)."""

# A zstd block decodes to at most 128 KiB and its smallest encoding (an RLE block)
# takes 4 bytes: one input byte can never yield more than this much output.
_MAX_EXPANSION_PER_INPUT_BYTE = 128 * 1024 // 4
_MIN_FEED = 64
# The largest window a frame may ask for; the zstd library's own default limit.
_MAX_WINDOW = 1 << 27
# Windows up to this size are always accepted (what zstd picks up to level 19).
_MIN_WINDOW_LIMIT = 1 << 23


class CompressionError(ProtocolError, ValueError):
    """The input is not a valid, complete zstd stream."""


class DecompressedTooLarge(CompressionError):
    """Decoding would produce more than the allowed number of bytes (a bomb, or too big)."""

    def __init__(self, max_size: int) -> None:
        super().__init__(f"decompressed data exceeds the limit of {max_size} bytes")
        self.max_size = max_size


def is_zstd(data: bytes) -> bool:
    """Whether ``data`` starts with the zstd frame magic."""
    return data[:4] == ZSTD_MAGIC


def zstd_compress(data: bytes, level: int = 3) -> bytes:
    """One zstd frame holding ``data``, with its content size in the header."""
    return zstandard.ZstdCompressor(level=level).compress(data)


def zstd_decompress(data: bytes, max_size: int) -> bytes:
    """Decode one or more concatenated zstd frames, producing at most ``max_size`` bytes.

    The input is fed to the decoder in slices small enough that a single slice
    cannot expand past the remaining budget by more than one block, so memory stays
    near ``max_size`` whatever the headers claim. Raises :class:`DecompressedTooLarge`
    past the cap and :class:`CompressionError` on corrupt or truncated input.
    """
    if max_size < 0:
        raise ValueError("max_size must not be negative")
    if not is_zstd(data):
        raise CompressionError("not zstd data (the frame magic 28 b5 2f fd is missing)")
    window_limit = min(_MAX_WINDOW, max(_MIN_WINDOW_LIMIT, _next_power_of_two(max_size)))
    decompressor = zstandard.ZstdDecompressor(max_window_size=window_limit)
    chunks: list[bytes] = []
    produced = 0
    remaining_input = memoryview(data)
    while remaining_input:
        if not is_zstd(bytes(remaining_input[:4])):
            raise CompressionError("trailing bytes after the last zstd frame")
        _check_declared_size(bytes(remaining_input[:18]), max_size - produced, max_size)
        frame = decompressor.decompressobj()
        position = 0
        try:
            while position < len(remaining_input) and not frame.eof:
                budget = max_size - produced
                step = max(_MIN_FEED, budget // _MAX_EXPANSION_PER_INPUT_BYTE)
                out = frame.decompress(remaining_input[position : position + step])
                position += step
                produced += len(out)
                if produced > max_size:
                    raise DecompressedTooLarge(max_size)
                if out:
                    chunks.append(out)
        except zstandard.ZstdError as error:
            raise CompressionError(f"corrupt zstd data: {error}") from None
        if not frame.eof:
            raise CompressionError("truncated zstd data (the frame does not end)")
        remaining_input = memoryview(frame.unused_data + bytes(remaining_input[position:]))
    return b"".join(chunks)


def reply_threshold(algorithm: str, threshold: int) -> int | None:
    """The size (bytes of JSON) above which replies may be compressed, from the
    ``compression`` config: None when compression is off (``algorithm`` not ``zstd``, or
    a threshold of 0)."""
    return threshold if algorithm == "zstd" and threshold > 0 else None


def compress_reply(size: int, opted_in: bool, threshold: int | None) -> bool:
    """Whether a reply or push of ``size`` bytes of JSON goes out as a binary zstd frame.

    The WebSocket policy (Reflow's client contract): only to a client that opted in (it
    sent a binary frame, or connected with ``?compression=zstd``), and only when the JSON
    is larger than ``threshold`` (see :func:`reply_threshold`; None: never). Everything
    else goes out as a text frame.
    """
    return opted_in and threshold is not None and size > threshold


def inflate_frame(data: bytes, max_size: int) -> bytes:
    """The JSON a binary frame carries: zstd-decoded when it starts with the zstd magic
    (at most ``max_size`` bytes, else :class:`DecompressedTooLarge`; corrupt data is
    :class:`CompressionError`), otherwise the bytes as they are (uncompressed JSON)."""
    if not is_zstd(data):
        return data
    return zstd_decompress(data, max_size)


def ratio(original: int, compressed: int) -> float:
    """Compression ratio ``original / compressed`` (1.0 when either side is empty)."""
    if original <= 0 or compressed <= 0:
        return 1.0
    return original / compressed


def _check_declared_size(header: bytes, budget: int, max_size: int) -> None:
    """Refuse a frame whose header already declares more than the remaining budget."""
    try:
        declared = zstandard.frame_content_size(header)
    except zstandard.ZstdError:
        return  # a damaged header: the decoder reports it with the right message
    if declared > budget:
        raise DecompressedTooLarge(max_size)


def _next_power_of_two(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()
