"""The zstd codec: round trips, and bombs that must end in an error with bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import zstandard

from reflow_microsandbox.compression import (
    ZSTD_MAGIC,
    CompressionError,
    DecompressedTooLarge,
    is_zstd,
    ratio,
    zstd_compress,
    zstd_decompress,
)

MiB = 1024 * 1024
GiB = 1024 * MiB


def _streamed_zeros(total: int) -> bytes:
    """A frame of ``total`` zero bytes made by streaming: its header has no content size."""
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    chunk = b"\0" * MiB
    parts = [compressor.compress(chunk) for _ in range(total // MiB)]
    return b"".join(parts) + compressor.flush()


def _claim_content_size(frame: bytes, claimed: int) -> bytes:
    """Rewrite a frame header (that has no content size) to claim ``claimed`` bytes."""
    descriptor, window = frame[4], frame[5]
    assert descriptor & 0xE0 == 0, "expected no content size and no single-segment flag"
    assert 256 <= claimed < 65536 + 256
    # Frame_Content_Size_flag 1: a 2-byte field holding (size - 256).
    return (
        frame[:4]
        + bytes([descriptor | 0x40, window])
        + (claimed - 256).to_bytes(2, "little")
        + frame[6:]
    )


@pytest.fixture(scope="module")
def gigabyte_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bombs") / "1gib-zeros.zst"
    path.write_bytes(_streamed_zeros(GiB))
    return path


def test_round_trip_gives_back_the_bytes() -> None:
    data = json.dumps({"x": "y" * 10_000, "n": list(range(500))}).encode()
    packed = zstd_compress(data)
    assert is_zstd(packed)
    assert len(packed) < len(data)
    assert zstd_decompress(packed, max_size=len(data)) == data


def test_output_exactly_at_the_limit_passes_and_one_byte_more_does_not() -> None:
    data = b"a" * 5000
    assert zstd_decompress(zstd_compress(data), max_size=5000) == data
    with pytest.raises(DecompressedTooLarge):
        zstd_decompress(zstd_compress(data + b"a"), max_size=5000)


def test_no_json_text_looks_like_zstd() -> None:
    samples = [{}, [], "x", 0, -1.5, True, None, {"a": [1, 2]}, "(", "\u00b5"]
    for value in samples:
        assert not is_zstd(json.dumps(value).encode())
        assert not is_zstd(json.dumps(value, ensure_ascii=False).encode())
    assert is_zstd(ZSTD_MAGIC + b"rest")


def test_a_gigabyte_bomb_without_content_size_is_refused(gigabyte_bomb: Path) -> None:
    bomb = gigabyte_bomb.read_bytes()
    assert zstandard.frame_content_size(bomb) == -1  # the header does not say
    assert len(bomb) < 64 * 1024
    with pytest.raises(DecompressedTooLarge, match=f"limit of {16 * MiB} bytes"):
        zstd_decompress(bomb, max_size=16 * MiB)


def test_a_frame_that_claims_little_but_expands_to_a_gigabyte_is_refused(
    gigabyte_bomb: Path,
) -> None:
    liar = _claim_content_size(gigabyte_bomb.read_bytes(), 1000)
    assert zstandard.frame_content_size(liar) == 1000
    # The decoder refuses output past the declared size: a corrupt frame, never 1 GiB.
    with pytest.raises(CompressionError):
        zstd_decompress(liar, max_size=16 * MiB)


def test_a_frame_that_honestly_declares_too_much_is_refused_before_decoding() -> None:
    honest = zstd_compress(b"\0" * (64 * MiB))
    assert zstandard.frame_content_size(honest) == 64 * MiB
    with pytest.raises(DecompressedTooLarge):
        zstd_decompress(honest, max_size=16 * MiB)


@pytest.mark.parametrize("claimed", [None, 1000])
def test_decompressing_a_gigabyte_bomb_keeps_memory_near_the_cap(
    gigabyte_bomb: Path, claimed: int | None
) -> None:
    """Measured in a fresh process: its peak RSS stays far below the 1 GiB of the bomb."""
    bomb_path = gigabyte_bomb
    if claimed is not None:
        bomb_path = gigabyte_bomb.with_name(f"claims-{claimed}.zst")
        bomb_path.write_bytes(_claim_content_size(gigabyte_bomb.read_bytes(), claimed))
    program = textwrap.dedent(
        f"""
        import resource, sys
        from reflow_microsandbox.compression import CompressionError, zstd_decompress
        data = open({str(bomb_path)!r}, "rb").read()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            zstd_decompress(data, max_size={16 * MiB})
        except CompressionError as error:
            outcome = type(error).__name__
        else:
            outcome = "decoded"
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(outcome, before, after)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=True
    )
    outcome, before_kib, after_kib = result.stdout.split()
    assert outcome in ("DecompressedTooLarge", "CompressionError")
    grown_mib = (int(after_kib) - int(before_kib)) / 1024
    assert grown_mib < 64, f"peak memory grew by {grown_mib:.0f} MiB"


def test_concatenated_frames_count_together_against_the_cap() -> None:
    frame = zstd_compress(b"b" * 600)
    assert zstd_decompress(frame + frame, max_size=1200) == b"b" * 1200
    with pytest.raises(DecompressedTooLarge):
        zstd_decompress(frame + frame, max_size=1000)


def test_truncated_data_is_an_error_not_a_short_result() -> None:
    frame = zstd_compress(b"hello world " * 1000)
    with pytest.raises(CompressionError, match="truncated"):
        zstd_decompress(frame[:-4], max_size=MiB)


def test_garbage_is_an_error() -> None:
    frame = zstd_compress(b"hello world " * 100)
    with pytest.raises(CompressionError, match="trailing"):
        zstd_decompress(frame + b"junk", max_size=MiB)
    with pytest.raises(CompressionError, match="magic"):
        zstd_decompress(b'{"json": true}', max_size=MiB)
    with pytest.raises(CompressionError):
        zstd_decompress(ZSTD_MAGIC + b"\xff" * 32, max_size=MiB)


def test_a_frame_asking_for_a_huge_window_is_refused_for_a_small_cap() -> None:
    params = zstandard.ZstdCompressionParameters.from_level(19, window_log=27)
    streamed = zstandard.ZstdCompressor(compression_params=params).compressobj()
    frame = streamed.compress(b"z" * 1000) + streamed.flush()
    assert zstandard.get_frame_parameters(frame).window_size == 1 << 27
    with pytest.raises(CompressionError):
        zstd_decompress(frame, max_size=MiB)


def test_ratio_is_original_over_compressed() -> None:
    assert ratio(10_000, 100) == 100.0
    assert ratio(0, 0) == 1.0
