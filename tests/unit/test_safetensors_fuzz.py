"""Fuzz the safetensors header parser: any bytes give a header or SafetensorsError,
quickly (bounded example count and deadline)."""

from __future__ import annotations

import json
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufleet.core.safetensors import SafetensorsError, parse_safetensors_header


def _valid() -> bytes:
    text = json.dumps({
        "__metadata__": {"format": "pt"},
        "w": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 12]},
        "b": {"dtype": "F32", "shape": [3], "data_offsets": [12, 24]},
    }).encode()
    return struct.pack("<Q", len(text)) + text + bytes(24)


VALID = _valid()
FUZZ = settings(max_examples=400, deadline=500, suppress_health_check=[HealthCheck.too_slow])


def _check(buf: bytes, file_size: int | None) -> None:
    try:
        parse_safetensors_header(buf, file_size=file_size)
    except SafetensorsError:
        pass


@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes(buf: bytes) -> None:
    _check(buf, len(buf))


@FUZZ
@given(st.integers(0, len(VALID) - 1), st.integers(0, 255))
def test_byte_flips(pos: int, value: int) -> None:
    buf = bytearray(VALID)
    buf[pos] = value
    _check(bytes(buf), len(buf))


@FUZZ
@given(st.integers(0, 2**64 - 1))
def test_lying_header_length(n: int) -> None:
    _check(struct.pack("<Q", n) + VALID[8:], len(VALID))


@FUZZ
@given(st.integers(0, len(VALID)))
def test_truncation(cut: int) -> None:
    _check(VALID[:cut], None)
    _check(VALID[:cut], cut)


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=4),
                    max_leaves=30))
def test_json_shaped_garbage(doc: object) -> None:
    text = json.dumps({"t": doc, "u": {"dtype": "F16", "shape": doc, "data_offsets": doc}}).encode()
    _check(struct.pack("<Q", len(text)) + text, None)
