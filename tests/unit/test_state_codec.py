"""The state key layout and value codec: plain JSON as Reflow reads it, zstd above the threshold."""

from __future__ import annotations

import json

import pytest

from reflow_microsandbox.compression import ZSTD_MAGIC, zstd_compress
from reflow_microsandbox.state.codec import (
    StateValueError,
    StoredValueError,
    add_number,
    decode_value,
    encode_value,
    state_key,
)


def test_keys_are_laid_out_as_reflow_does() -> None:
    assert state_key("default", "test_actor", "counter") == "default:test_actor:counter"
    assert state_key("a.b", "x", "k:with:colons") == "a.b:x:k:with:colons"


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, -7, 2**62, 1.5, "", "héllo ✓", [], [1, [2, [3]]], {"a": {"b": None}}],
)
def test_every_json_type_round_trips(value: object) -> None:
    assert decode_value(encode_value(value, threshold=1024)) == value


def test_small_values_are_compact_plain_json_text() -> None:
    raw = encode_value({"a": [1, 2], "s": "é"}, threshold=1024)
    assert raw == '{"a":[1,2],"s":"é"}'.encode()
    assert json.loads(raw) == {"a": [1, 2], "s": "é"}


def test_values_above_the_threshold_are_zstd_and_below_it_are_not() -> None:
    text_of_1024 = "x" * 1022  # json adds the two quotes
    assert not encode_value(text_of_1024, threshold=1024).startswith(ZSTD_MAGIC)
    big = encode_value(text_of_1024 + "x", threshold=1024)
    assert big.startswith(ZSTD_MAGIC)
    assert len(big) < 100
    assert decode_value(big) == text_of_1024 + "x"


def test_threshold_zero_never_compresses() -> None:
    raw = encode_value("y" * 100_000, threshold=0)
    assert raw == b'"' + b"y" * 100_000 + b'"'


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (float("nan"), "not strict JSON"),
        (float("inf"), "not strict JSON"),
        ({1j}, "not strict JSON"),
        (object(), "not strict JSON"),
        ("\ud800", "not valid Unicode"),
    ],
)
def test_values_that_are_not_strict_json_are_refused(value: object, reason: str) -> None:
    with pytest.raises(StateValueError, match=reason):
        encode_value(value, threshold=1024)


def test_values_larger_than_the_cap_are_refused() -> None:
    with pytest.raises(StateValueError, match="more than the limit of 1000"):
        encode_value("z" * 2000, threshold=1024, max_size=1000)


def test_what_reflow_stores_natively_is_read() -> None:
    assert decode_value(b"42") == 42  # INCRBY counters are raw integer text
    assert decode_value(b'"text"') == "text"


def test_unreadable_stored_values_are_reported() -> None:
    with pytest.raises(StoredValueError, match="not JSON"):
        decode_value(b"not json at all")
    with pytest.raises(StoredValueError, match="cannot be decompressed"):
        decode_value(ZSTD_MAGIC + b"\x00" * 8)
    with pytest.raises(StoredValueError, match="exceeds the limit"):
        decode_value(zstd_compress(b'"' + b"q" * 5000 + b'"'), max_size=1000)


def test_increment_adds_to_numbers_and_starts_from_zero() -> None:
    assert add_number(None, 1) == 1
    assert add_number(41, 1) == 42
    assert add_number(1.5, 2) == 3.5
    assert add_number(10, -3) == 7


@pytest.mark.parametrize("current", ["5", [1], {"a": 1}, True])
def test_increment_refuses_what_is_not_a_number(current: object) -> None:
    with pytest.raises(StateValueError, match="only numbers can be incremented"):
        add_number(current, 1)


def test_increment_refuses_a_non_finite_result_and_a_non_numeric_step() -> None:
    with pytest.raises(StateValueError, match="finite"):
        add_number(1.7e308, 1.7e308)
    with pytest.raises(StateValueError, match="step must be a number"):
        add_number(1, True)
