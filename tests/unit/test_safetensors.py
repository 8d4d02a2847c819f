"""safetensors header parser: valid headers, every rejection path, truncation hints."""

from __future__ import annotations

import json
import struct

import pytest

from gpufleet.core.safetensors import (
    SafetensorsError,
    SafetensorsTruncated,
    parse_safetensors_header,
    parse_safetensors_index,
)


def st_bytes(entries: dict[str, object], pad: int = 0) -> bytes:
    text = json.dumps(entries).encode() + b" " * pad
    return struct.pack("<Q", len(text)) + text


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_parses_tensors_dtypes_and_metadata() -> None:
    header = st_bytes({
        "__metadata__": {"format": "pt"},
        "a": entry("F16", [4, 8], 0, 64),     # 4*8 elements * 2 bytes = 64
        "b": entry("BF16", [3], 64, 70),      # 3 * 2 = 6
        "c": entry("F32", [], 70, 74),        # scalar: 1 element * 4 = 4
        "d": entry("F4", [3], 74, 76),        # 3 * 4 bits = 12 bits -> ceil = 2 bytes
    }, pad=6)
    h = parse_safetensors_header(header + bytes(76), file_size=len(header) + 76)
    assert h.header_size == len(header)
    assert h.metadata == {"format": "pt"}
    assert [(t.name, t.n_elements, t.n_bytes) for t in h.tensors] == [
        ("a", 32, 64), ("b", 3, 6), ("c", 1, 4), ("d", 3, 2),
    ]
    assert h.tensor_bytes == 76  # 64 + 6 + 4 + 2


def test_truncated_buffer_says_exactly_how_much_to_read() -> None:
    header = st_bytes({"a": entry("F16", [2], 0, 4)})
    with pytest.raises(SafetensorsTruncated) as exc:
        parse_safetensors_header(header[:20])
    assert exc.value.needed == len(header)
    with pytest.raises(SafetensorsTruncated) as exc:
        parse_safetensors_header(header[:5])
    assert exc.value.needed == 8


@pytest.mark.parametrize(
    "raw, file_size, message",
    [
        (struct.pack("<Q", 2**63) + b"{}", None, "over the 100000000-byte limit"),
        (struct.pack("<Q", 1000) + b"{}", 100, "file is only 100 bytes"),
        (struct.pack("<Q", 1) + b"{", None, "too short"),
        (struct.pack("<Q", 4) + b"[1] ", None, "expected an object"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", None, "not UTF-8"),
        (struct.pack("<Q", 3) + b"{x}", None, "not valid JSON"),
        (st_bytes({"a": entry("Q4", [2], 0, 4)}), None, "unknown dtype"),
        (st_bytes({"a": entry("F16", [2, -1], 0, 4)}), None, "out-of-range"),
        (st_bytes({"a": entry("F16", [2.5], 0, 4)}), None, "non-integer"),
        (st_bytes({"a": entry("F16", [2], 4, 0)}), None, "begin <= end"),
        # 2 elements * 2 bytes = 4, but the range spans 6
        (st_bytes({"a": entry("F16", [2], 0, 6)}), None, "needs 4 bytes but data_offsets span 6"),
        (st_bytes({"a": entry("F16", [2], 0, 4), "b": entry("F16", [2], 2, 6)}), None, "overlap"),
        (st_bytes({"a": "x"}), None, "not an object"),
        (st_bytes({"__metadata__": {"k": 1}}), None, "__metadata__"),
        (st_bytes({"a": entry("F16", [2**31, 2**31, 2**31], 0, 4)}), None, "over the limit"),
        (struct.pack("<Q", 2002) + b"[" * 1001 + b"]" * 1001, None, "not valid JSON"),
    ],
)
def test_rejects_malformed_headers(raw: bytes, file_size: int | None, message: str) -> None:
    with pytest.raises(SafetensorsError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_safetensors_header(raw, file_size=file_size)


def test_tensor_past_end_of_file_is_rejected() -> None:
    header = st_bytes({"a": entry("F32", [4], 0, 16)})  # 4 * 4 = 16 bytes of data
    with pytest.raises(SafetensorsError, match="past the 8-byte data section"):
        parse_safetensors_header(header + bytes(8), file_size=len(header) + 8)


def test_index_lists_shards_and_total() -> None:
    idx = parse_safetensors_index(json.dumps({
        "metadata": {"total_size": 100},
        "weight_map": {"a": "m-00002.safetensors", "b": "m-00001.safetensors", "c": "m-00001.safetensors"},
    }).encode())
    assert idx.shards == ["m-00001.safetensors", "m-00002.safetensors"]
    assert idx.total_size == 100


@pytest.mark.parametrize("doc", [{"weight_map": {}}, {"weight_map": {"a": "../x"}}, {"metadata": {}}])
def test_index_rejects_bad_maps(doc: dict[str, object]) -> None:
    with pytest.raises(SafetensorsError):
        parse_safetensors_index(json.dumps(doc).encode())
