"""Tests for the pure GGUF header parser (gpufleet.core.gguf).

The parser is checked against gguf-py (the reference implementation from
llama.cpp) on real files written by GGUFWriter, and against hand-built
malformed headers for every validation it promises.
"""

from __future__ import annotations

import ast
import copy
import mmap
import pickle
import struct
import time
from collections.abc import Sequence
from pathlib import Path

import gguf
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES

import gpufleet.core.gguf as gguf_module
from gpufleet.core.gguf import (
    DEFAULT_LIMITS,
    GGML_TYPE_NAMES,
    GGML_TYPE_SIZES,
    GGUFError,
    GGUFHeader,
    GGUFStringArray,
    GGUFTruncated,
    ParseLimits,
    parse_gguf_header,
)
from gpufleet.demo.tiny_model import TinyModelShape, write_tiny_llama_gguf

# --------------------------------------------------------------------------
# Raw GGUF builders for hand-made (and deliberately broken) headers
# --------------------------------------------------------------------------

T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR = range(10)
T_U64, T_I64, T_F64 = 10, 11, 12


def gstr(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, T_U32, struct.pack("<I", value))


def kv_str(key: str, value: str) -> bytes:
    return kv(key, T_STR, gstr(value))


def tinfo(name: str, dims: list[int], ggml_type: int = 0, offset: int = 0) -> bytes:
    return (
        gstr(name)
        + struct.pack("<I", len(dims))
        + struct.pack(f"<{len(dims)}Q", *dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


def gguf_bytes(
    kvs: list[bytes],
    tensors: list[bytes] = (),  # type: ignore[assignment]
    *,
    version: int = 3,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    magic: bytes = b"GGUF",
    data: bytes = b"",
    alignment: int = 32,
) -> bytes:
    head = magic + struct.pack(
        "<IQQ",
        version,
        len(tensors) if n_tensors is None else n_tensors,
        len(kvs) if n_kv is None else n_kv,
    )
    body = head + b"".join(kvs) + b"".join(tensors)
    if tensors or data:
        body += b"\0" * (-len(body) % alignment)
    return body + data


ARCH_KV = kv_str("general.architecture", "llama")


def header_with_tensor(dims: list[int], ggml_type: int = 0, n_data: int = 0) -> bytes:
    return gguf_bytes([ARCH_KV], [tinfo("w", dims, ggml_type)], data=b"\0" * n_data)


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny_bytes(tiny_path: Path) -> bytes:
    return tiny_path.read_bytes()


# --------------------------------------------------------------------------
# Real files: agree with gguf-py
# --------------------------------------------------------------------------

SHAPES = {
    "default": TinyModelShape(),
    "f16-3-layers": TinyModelShape(n_layers=3, dtype="f16"),
    "gqa": TinyModelShape(n_layers=1, hidden=128, n_heads=8, n_kv_heads=2, ffn=256),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_tiny_model_matches_gguf_reader(tmp_path: Path, shape: TinyModelShape) -> None:
    path = write_tiny_llama_gguf(tmp_path / "m.gguf", shape, seed=1)
    raw = path.read_bytes()
    header = parse_gguf_header(raw, file_size=len(raw))
    reader = GGUFReader(path)

    assert header.version == 3
    assert header.architecture == "llama"
    assert header.arch_value("block_count") == shape.n_layers
    assert header.arch_value("attention.head_count") == shape.n_heads
    assert header.arch_value("attention.head_count_kv") == shape.n_kv_heads
    assert header.arch_value("embedding_length") == shape.hidden
    assert header.get("general.file_type") == (1 if shape.dtype == "f16" else 0)
    assert len(header.tensors) == 3 + 9 * shape.n_layers == len(reader.tensors)
    assert header.tensor_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    assert header.data_offset == reader.data_offset
    assert header.alignment == reader.alignment
    for ours, theirs in zip(header.tensors, reader.tensors, strict=True):
        assert ours.name == theirs.name
        assert ours.shape == tuple(int(d) for d in theirs.shape)
        assert ours.ggml_type == int(theirs.tensor_type)
        assert header.data_offset + ours.offset == theirs.data_offset
        assert (ours.n_elements, ours.n_bytes) == (int(theirs.n_elements), int(theirs.n_bytes))


def test_tiny_model_metadata_and_helpers(tiny_bytes: bytes) -> None:
    header = parse_gguf_header(tiny_bytes, len(tiny_bytes))
    tokens = header.get("tokenizer.ggml.tokens")
    assert isinstance(tokens, GGUFStringArray)
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert tokens[3] == "<0x00>" and tokens[258] == "<0xFF>"
    assert header.get("tokenizer.ggml.token_type")[3] == 6  # type: ignore[index]
    assert header.arch_value("vocab_size") == len(tokens)
    assert header.arch_value("missing", "dflt") == "dflt"
    assert header.get("missing") is None
    assert header.header_size <= header.data_offset < header.header_size + header.alignment
    emb = next(t for t in header.tensors if t.name == "token_embd.weight")
    assert emb.shape == (64, len(tokens)) and emb.type_name == "F32"


def test_buffer_kinds_parse_identically(tiny_bytes: bytes) -> None:
    expected = parse_gguf_header(tiny_bytes)
    for buf in (bytearray(tiny_bytes), memoryview(tiny_bytes)):
        assert parse_gguf_header(buf) == expected


def test_architecture_absent_gives_none() -> None:
    header = parse_gguf_header(gguf_bytes([kv_u32("x", 1)]))
    assert header.architecture is None
    assert header.arch_value("block_count", 7) == 7
    assert header.alignment == 32 and header.tensors == ()


# --------------------------------------------------------------------------
# Metadata value types round-trip through GGUFWriter
# --------------------------------------------------------------------------

ROUND_TRIP: list[tuple[str, object, GGUFValueType, GGUFValueType | None]] = [
    ("t.u8", 255, GGUFValueType.UINT8, None),
    ("t.i8", -128, GGUFValueType.INT8, None),
    ("t.u16", 65535, GGUFValueType.UINT16, None),
    ("t.i16", -32768, GGUFValueType.INT16, None),
    ("t.u32", 2**32 - 1, GGUFValueType.UINT32, None),
    ("t.i32", -(2**31), GGUFValueType.INT32, None),
    ("t.f32", 1.5, GGUFValueType.FLOAT32, None),
    ("t.bool_true", True, GGUFValueType.BOOL, None),
    ("t.bool_false", False, GGUFValueType.BOOL, None),
    ("t.str", "héllo ▁wörld", GGUFValueType.STRING, None),
    ("t.u64", 2**64 - 1, GGUFValueType.UINT64, None),
    ("t.i64", -(2**63), GGUFValueType.INT64, None),
    ("t.f64", -2.000000000001, GGUFValueType.FLOAT64, None),
    ("t.arr_i32", [1, -2, 3], GGUFValueType.ARRAY, GGUFValueType.INT32),
    ("t.arr_u64", [0, 2**64 - 1], GGUFValueType.ARRAY, GGUFValueType.UINT64),
    ("t.arr_u8", [0, 7, 255], GGUFValueType.ARRAY, GGUFValueType.UINT8),
    ("t.arr_f32", [0.5, -0.25], GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
    ("t.arr_f64", [0.1, 1e300], GGUFValueType.ARRAY, GGUFValueType.FLOAT64),
    ("t.arr_bool", [True, False, True], GGUFValueType.ARRAY, GGUFValueType.BOOL),
    ("t.arr_str", ["a", "", "ü▁x"], GGUFValueType.ARRAY, GGUFValueType.STRING),
    ("t.nested", [[1, 2], [3]], GGUFValueType.ARRAY, None),
    ("t.nested_str", [["x"], ["y", "z"]], GGUFValueType.ARRAY, None),
]


@pytest.fixture(scope="module")
def round_trip_header(tmp_path_factory: pytest.TempPathFactory) -> GGUFHeader:
    path = tmp_path_factory.mktemp("kv") / "kv.gguf"
    writer = GGUFWriter(path, "llama")
    for key, value, vtype, sub in ROUND_TRIP:
        writer.add_key_value(key, value, vtype, sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    raw = path.read_bytes()
    return parse_gguf_header(raw, len(raw))


@pytest.mark.parametrize(
    ("key", "value"), [(k, v) for k, v, _, _ in ROUND_TRIP], ids=[k for k, *_ in ROUND_TRIP]
)
def test_metadata_round_trip(round_trip_header: GGUFHeader, key: str, value: object) -> None:
    got = round_trip_header.get(key)
    assert got == value
    string_array = isinstance(value, list) and bool(value) and isinstance(value[0], str)
    assert type(got) is (GGUFStringArray if string_array else type(value))


# --------------------------------------------------------------------------
# Truncation and the windowed-reader protocol
# --------------------------------------------------------------------------


def read_windowed(full: bytes, start: int, file_size: int | None) -> tuple[GGUFHeader, int]:
    """What a caller reading a remote file does: fetch a prefix, and on
    GGUFTruncated fetch `needed` bytes and retry."""
    have = start
    for attempt in range(10_000):
        try:
            return parse_gguf_header(full[:have], file_size), attempt
        except GGUFTruncated as exc:
            assert exc.needed > have, "a retry must always make progress"
            assert exc.needed <= len(full), "needed must be a lower bound"
            have = exc.needed
    raise AssertionError("windowed read did not converge")


def test_every_cut_point_is_truncated(tiny_bytes: bytes) -> None:
    header_size = parse_gguf_header(tiny_bytes).header_size
    for cut in range(0, header_size, 7):
        with pytest.raises(GGUFTruncated) as info:
            parse_gguf_header(tiny_bytes[:cut])
        assert info.value.needed > cut
        assert info.value.needed <= header_size
        with pytest.raises(GGUFTruncated):  # same when the file is known to be longer
            parse_gguf_header(tiny_bytes[:cut], file_size=len(tiny_bytes))


@pytest.mark.parametrize("start", [0, 1, 4, 23, 24, 100, 1000, 5000])
@pytest.mark.parametrize("known_size", [False, True], ids=["size-unknown", "size-known"])
def test_windowed_reader_converges(tiny_bytes: bytes, start: int, known_size: bool) -> None:
    expected = parse_gguf_header(tiny_bytes)
    header, _ = read_windowed(tiny_bytes, start, len(tiny_bytes) if known_size else None)
    assert header == expected


def test_windowed_reader_needs_few_retries_for_a_big_vocab() -> None:
    full = big_vocab_file(20_000)
    header, attempts = read_windowed(full, 4096, None)
    assert len(header.get("tokenizer.ggml.tokens")) == 20_000  # type: ignore[arg-type]
    assert attempts < 100


def test_truncated_memoryview_reports_the_same(tiny_bytes: bytes) -> None:
    for cut in (30, 500, 4000, 9000):
        with pytest.raises(GGUFTruncated) as a:
            parse_gguf_header(tiny_bytes[:cut])
        with pytest.raises(GGUFTruncated) as b:
            parse_gguf_header(memoryview(tiny_bytes)[:cut])
        assert a.value.needed == b.value.needed


# --------------------------------------------------------------------------
# Malformed input
# --------------------------------------------------------------------------

HUGE = 2**40
FULL = -1  # file_size sentinel: the file is exactly the bytes given
# id -> (raw bytes, file_size (None = unknown, FULL = len(raw)), message substring)
MALFORMED: dict[str, tuple[bytes, int | None, str]] = {
    "bad-magic": (b"GGML" + bytes(20), FULL, "bad magic"),
    "bad-magic-short-prefix": (b"GX", None, "bad magic"),
    "version-1": (b"GGUF" + struct.pack("<IIi", 1, 0, 0), None, "version 1 is not supported"),
    "big-endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), None, "big-endian"),
    "unknown-version": (b"GGUF" + struct.pack("<IQQ", 9, 0, 0), None, "unsupported GGUF version 9"),
    "huge-kv-count": (gguf_bytes([], n_kv=HUGE), None, f"metadata kv count {HUGE}"),
    "huge-tensor-count": (gguf_bytes([], n_tensors=HUGE), None, f"tensor count {HUGE}"),
    "huge-string-length": (
        gguf_bytes([struct.pack("<Q", HUGE) + b"key" + bytes(16)], n_kv=1),
        None,
        f"length {HUGE}, over the limit",
    ),
    "array-of-2**63": (
        gguf_bytes([kv("a", T_ARR, struct.pack("<IQ", T_U8, 2**63))]),
        None,
        f"array length {2**63}, over the limit",
    ),
    "array-longer-than-file": (
        gguf_bytes([kv("a", T_ARR, struct.pack("<IQ", T_U32, 1000))]),
        53,
        "but file is only 53 bytes",
    ),
    "string-longer-than-file": (
        gguf_bytes([kv("a", T_STR, struct.pack("<Q", 100) + b"xx")]),
        51,
        "but file is only 51 bytes",
    ),
    "kv-count-exceeds-file": (gguf_bytes([], n_kv=1000), 24, "but file is only 24 bytes"),
    "unknown-value-type": (gguf_bytes([kv("a", 13, b"\0" * 8)]), None, "unknown value type 13"),
    "unknown-array-element-type": (
        gguf_bytes([kv("a", T_ARR, struct.pack("<IQ", 77, 1))]),
        None,
        "unknown array element type 77",
    ),
    "nesting-too-deep": (
        gguf_bytes(
            [kv("a", T_ARR, struct.pack("<IQ", T_ARR, 1) * 6 + struct.pack("<IQ", T_U8, 0))]
        ),
        None,
        "nests arrays",
    ),
    "duplicate-key": (
        gguf_bytes([kv_u32("k", 1), kv_u32("k", 2)]),
        None,
        "duplicate metadata key 'k'",
    ),
    "n-dims-5": (gguf_bytes([ARCH_KV], [tinfo("w", [1, 1, 1, 1, 1])]), None, "n_dims 5"),
    "unknown-ggml-type": (header_with_tensor([32], ggml_type=99), None, "unknown ggml type 99"),
    "retired-ggml-type": (header_with_tensor([32], ggml_type=4), None, "unknown ggml type 4"),
    "misaligned-offset": (
        gguf_bytes([ARCH_KV], [tinfo("w", [4], 0, offset=8)]),
        None,
        "data offset 8 is not a multiple of alignment 32",
    ),
    "data-beyond-file": (header_with_tensor([64], n_data=100), FULL, "extends beyond the end"),
    "alignment-not-power-of-two": (
        gguf_bytes([kv_u32("general.alignment", 48)]),
        None,
        "power of two",
    ),
    "alignment-zero": (gguf_bytes([kv_u32("general.alignment", 0)]), None, "power of two"),
    "alignment-wrong-type": (
        gguf_bytes([kv_str("general.alignment", "32")]),
        None,
        "general.alignment must be an integer",
    ),
    "negative-dimension": (header_with_tensor([2**63]), None, "negative dimension"),
    "element-overflow": (header_with_tensor([2**31, 2**31, 2**31]), None, "overflow"),
    "not-whole-blocks": (
        header_with_tensor([33, 2], ggml_type=2),
        None,
        "not a multiple of the block size 32",
    ),
    "duplicate-tensor": (
        gguf_bytes([ARCH_KV], [tinfo("w", [4]), tinfo("w", [4], offset=32)]),
        None,
        "duplicate tensor name 'w'",
    ),
    "tensor-name-too-long": (
        gguf_bytes([ARCH_KV], [tinfo("x" * 64, [4])]),
        None,
        "length 64, over the limit of 63",
    ),
}


@pytest.mark.parametrize(("raw", "file_size", "message"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_input_is_rejected(raw: bytes, file_size: int | None, message: str) -> None:
    if file_size == FULL:
        file_size = len(raw)
    with pytest.raises(GGUFError) as info:
        parse_gguf_header(raw, file_size)
    assert not isinstance(info.value, GGUFTruncated), str(info.value)
    assert message in str(info.value)


def test_unknown_ggml_type_message_names_type_and_tensor() -> None:
    with pytest.raises(GGUFError, match=r"tensor 'w' .* unknown ggml type 99"):
        parse_gguf_header(header_with_tensor([32], ggml_type=99))


def test_huge_array_fails_immediately_without_file_size() -> None:
    raw = gguf_bytes([kv("a", T_ARR, struct.pack("<IQ", T_U64, 2**63))])
    assert len(raw) == 49  # the smallest such file: 24-byte prefix + 1-char key kv
    start = time.perf_counter()
    with pytest.raises(GGUFError, match="over the limit"):
        parse_gguf_header(raw)
    assert time.perf_counter() - start < 0.5


def test_array_under_cap_but_past_buffer_is_truncated_not_allocated() -> None:
    count = DEFAULT_LIMITS.max_array_len
    raw = gguf_bytes([kv("a", T_ARR, struct.pack("<IQ", T_U32, count))])
    with pytest.raises(GGUFTruncated) as info:
        parse_gguf_header(raw)
    assert info.value.needed == len(raw) + 4 * count


def test_header_size_limit() -> None:
    raw = gguf_bytes([kv_str("a", "x" * 1000)])
    small = ParseLimits(max_header_bytes=512)
    for buf in (raw, raw[:300], memoryview(raw)):  # same verdict however much was read
        with pytest.raises(GGUFError, match="over the 512-byte limit") as info:
            parse_gguf_header(buf, limits=small)
        assert not isinstance(info.value, GGUFTruncated)


def test_custom_alignment_is_honoured() -> None:
    raw = gguf_bytes(
        [kv_u32("general.alignment", 64)],
        [tinfo("a", [4]), tinfo("b", [4], offset=64)],
        alignment=64,
        data=b"\0" * 80,
    )
    header = parse_gguf_header(raw, len(raw))
    assert header.alignment == 64 and header.data_offset % 64 == 0
    assert [t.n_bytes for t in header.tensors] == [16, 16]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    str_array = struct.pack("<IQ", T_STR, 2)
    raw = gguf_bytes(
        [
            kv("a", T_STR, gstr(b"ok\xff")),
            kv("b", T_ARR, str_array + gstr(b"\xc3") + gstr(b"ok")),
            kv("c", T_ARR, str_array + gstr(b"\xc3") + gstr(b"z\0y")),  # NUL inside
        ]
    )
    header = parse_gguf_header(raw)
    assert header.get("a") == "ok\ufffd"
    assert header.get("b") == ["\ufffd", "ok"]
    assert header.get("c") == ["\ufffd", "z\0y"]


# --------------------------------------------------------------------------
# ggml type table
# --------------------------------------------------------------------------

# gguf-py still lists Q8_1 as (32, 40), from when its d and s were float32;
# ggml-common.h now has two fp16 + 32 int8 = 36 bytes.
KNOWN_GGUF_PY_DIFFERENCES = {9: ((32, 36), (32, 40))}


def test_type_sizes_match_gguf_py() -> None:
    shared = [t for t in GGML_QUANT_SIZES if int(t) in GGML_TYPE_SIZES]
    assert len(shared) == len(GGML_QUANT_SIZES), "a type gguf-py knows is missing here"
    for qtype in shared:
        ours, theirs = GGML_TYPE_SIZES[int(qtype)], tuple(GGML_QUANT_SIZES[qtype])
        if int(qtype) in KNOWN_GGUF_PY_DIFFERENCES:
            assert (ours, theirs) == KNOWN_GGUF_PY_DIFFERENCES[int(qtype)]
        else:
            assert ours == theirs, qtype.name


def test_type_names_match_gguf_py() -> None:
    assert GGML_TYPE_NAMES.keys() == GGML_TYPE_SIZES.keys()
    for qtype in gguf.GGMLQuantizationType:
        assert GGML_TYPE_NAMES[int(qtype)] == qtype.name


def test_quantized_tensor_bytes_are_exact() -> None:
    raw = header_with_tensor([512, 3], ggml_type=12)  # Q4_K: 256 elements -> 144 bytes
    header = parse_gguf_header(raw)
    assert header.tensors[0].n_bytes == 2 * 3 * 144
    assert header.tensors[0].type_name == "Q4_K"


# --------------------------------------------------------------------------
# Big vocabulary
# --------------------------------------------------------------------------


def big_vocab_file(n: int) -> bytes:
    tokens = b"".join(gstr(f"\u2581tok{i}") for i in range(n))
    kvs = [
        ARCH_KV,
        kv("tokenizer.ggml.tokens", T_ARR, struct.pack("<IQ", T_STR, n) + tokens),
        kv(
            "tokenizer.ggml.scores",
            T_ARR,
            struct.pack("<IQ", T_F32, n) + struct.pack(f"<{n}f", *range(n)),
        ),
        kv(
            "tokenizer.ggml.token_type",
            T_ARR,
            struct.pack("<IQ", T_I32, n) + struct.pack(f"<{n}i", *[1] * n),
        ),
    ]
    return gguf_bytes(kvs)


def test_150k_vocabulary_parses_fast() -> None:
    n = 150_000
    raw = big_vocab_file(n)
    for buf in (raw, memoryview(raw)):
        start = time.perf_counter()
        header = parse_gguf_header(buf, len(raw))
        elapsed = time.perf_counter() - start
        tokens = header.get("tokenizer.ggml.tokens")
        assert isinstance(tokens, GGUFStringArray) and len(tokens) == n
        assert tokens[0] == "\u2581tok0" and tokens[-1] == f"\u2581tok{n - 1}"
        assert len(header.get("tokenizer.ggml.scores")) == n  # type: ignore[arg-type]
        assert len(header.get("tokenizer.ggml.token_type")) == n  # type: ignore[arg-type]
        # ~60 ms on a laptop core; the bound only catches per-element blowups.
        assert elapsed < 2.0


# --------------------------------------------------------------------------
# String arrays: GGUFStringArray and the fast walk over long arrays
# --------------------------------------------------------------------------


def str_array_file(strings: list[bytes], tail: bool = True) -> bytes:
    """A header whose only big value is one string array; `tail` adds a key
    after it, so the array's end must be found exactly."""
    body = struct.pack("<IQ", T_STR, len(strings)) + b"".join(gstr(x) for x in strings)
    kvs = [ARCH_KV, kv("a", T_ARR, body)]
    if tail:
        kvs.append(kv_u32("after", 7))
    return gguf_bytes(kvs, [tinfo("w", [4])], data=b"\0" * 16)


def outcome(buf: bytes | memoryview, file_size: int | None = None, **kw: object) -> object:
    try:
        return parse_gguf_header(buf, file_size, **kw)  # type: ignore[arg-type]
    except GGUFTruncated as exc:
        return ("truncated", exc.needed, str(exc))
    except GGUFError as exc:
        return ("error", str(exc))


def mixed_strings(n: int) -> list[bytes]:
    """Short strings, with the cases the regex must hand to the loop spread
    over a few chunks: long ones (two-byte lengths), 255 bytes, empty, NUL
    inside, and invalid UTF-8."""
    out = [f"\u2581t{i}".encode() for i in range(n)]
    out[5] = b"x" * 300
    out[1500] = b"y" * 255
    out[1501] = b""
    out[2100] = b"a\0b"
    out[2101] = b"\xff\xfe"
    out[n - 1] = b"z" * 70_000
    return out


def test_string_array_is_a_lazy_sequence() -> None:
    raw = str_array_file([b"a", b"", "ü▁x".encode(), b"\xc3"])
    header = parse_gguf_header(raw, len(raw))
    arr = header.get("a")
    assert isinstance(arr, GGUFStringArray) and isinstance(arr, Sequence)
    assert not isinstance(arr, list)
    assert len(arr) == 4 and arr._items is None, "len() must not decode"
    assert arr == ["a", "", "ü▁x", "\ufffd"] and ["a", "", "ü▁x", "\ufffd"] == arr
    assert arr != ["a", "", "ü▁x"] and arr != ("a", "", "ü▁x", "\ufffd")
    assert arr[0] == "a" and arr[-1] == "\ufffd" and arr[1:3] == ["", "ü▁x"]
    assert isinstance(arr[1:3], list)
    assert list(arr) == ["a", "", "ü▁x", "\ufffd"] and list(reversed(arr))[0] == "\ufffd"
    assert "a" in arr and "b" not in arr and arr.index("") == 1 and arr.count("a") == 1
    assert ",".join(arr) == "a,,ü▁x,\ufffd"
    with pytest.raises(IndexError):
        arr[4]
    with pytest.raises(TypeError):
        hash(arr)
    assert arr == GGUFStringArray(["a", "", "ü▁x", "\ufffd"])
    assert pickle.loads(pickle.dumps(arr)) == arr and copy.deepcopy(arr) == arr
    assert repr(arr) == "GGUFStringArray(['a', '', 'ü▁x', '\ufffd'])"
    with pytest.raises(TypeError):
        GGUFStringArray([b"bytes"])  # type: ignore[list-item]


def test_long_string_array_repr_and_equality_need_not_decode() -> None:
    raw = str_array_file([f"s{i}".encode() for i in range(5000)])
    a, b = parse_gguf_header(raw).get("a"), parse_gguf_header(memoryview(raw)).get("a")
    assert isinstance(a, GGUFStringArray) and isinstance(b, GGUFStringArray)
    assert a == b and a._items is None and b._items is None
    assert repr(a) == f"GGUFStringArray({[f's{i}' for i in range(8)]!r} + 4992 more)"
    assert a._items is None
    assert a[4999] == "s4999" and a == [f"s{i}" for i in range(5000)]
    # differently encoded bytes that decode the same (two invalid sequences) still compare equal
    x = parse_gguf_header(str_array_file([b"\xff"] * 3)).get("a")
    y = parse_gguf_header(str_array_file([b"\xfe"] * 3)).get("a")
    assert x == y == ["\ufffd"] * 3


def test_string_array_outlives_its_mmap(tmp_path: Path) -> None:
    """The local reader parses an mmap and closes it straight after; the
    array must hold its own copy (closing would fail on a live view)."""
    strings = mixed_strings(3000)
    path = tmp_path / "m.gguf"
    path.write_bytes(str_array_file(strings))
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        header = parse_gguf_header(view, len(mm))
        view.release()
    arr = header.get("a")
    assert arr == [x.decode("utf-8", "replace") for x in strings]


def test_string_array_is_a_copy_of_a_bytearray() -> None:
    buf = bytearray(str_array_file([b"abc"] * 2000))
    header = parse_gguf_header(buf)
    buf[:] = bytes(len(buf))
    assert header.get("a") == ["abc"] * 2000


def test_long_string_arrays_match_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    strings = mixed_strings(4100)
    raw = str_array_file(strings)
    fast = [outcome(raw, len(raw)), outcome(memoryview(raw), len(raw))]
    monkeypatch.setattr(gguf_module, "_SHORT_CHUNK", 1 << 62)
    slow = [outcome(raw, len(raw)), outcome(memoryview(raw), len(raw))]
    assert fast == slow
    header = fast[0]
    assert isinstance(header, GGUFHeader) and header.get("after") == 7
    assert header.get("a") == [x.decode("utf-8", "replace") for x in strings]


def test_regex_does_not_read_a_two_byte_length_as_its_low_byte() -> None:
    """Length 0x0105 has low byte 5: a walk that trusted it would land in
    the middle of the string. The chunk must be left to the loop."""
    strings = [b"ab"] * 2048
    strings[700] = bytes(range(256)) + b"q" * 5
    raw = str_array_file(strings)
    assert parse_gguf_header(raw).get("a") == [x.decode("utf-8", "replace") for x in strings]


def test_truncation_inside_a_long_array_matches_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = str_array_file(mixed_strings(3000)[:2999] + [b"end"])
    cuts = [*range(0, len(raw), 997), *range(20_000, 20_100)]
    fast = [outcome(raw[:cut], fs) for cut in cuts for fs in (None, len(raw), cut)]
    monkeypatch.setattr(gguf_module, "_SHORT_CHUNK", 1 << 62)
    slow = [outcome(raw[:cut], fs) for cut in cuts for fs in (None, len(raw), cut)]
    assert fast == slow
    assert any(o[0] == "truncated" for o in fast if isinstance(o, tuple))


def test_limits_apply_on_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A string cap below 255 and a header cap inside the array give the
    same errors as the loop; the regex must not accept past either."""
    raw = str_array_file([b"x" * 20] * 3000)
    cases = [
        ParseLimits(max_string_len=19),
        ParseLimits(max_string_len=254),
        ParseLimits(max_header_bytes=40_000),
    ]
    fast = [outcome(raw, len(raw), limits=lim) for lim in cases]
    monkeypatch.setattr(gguf_module, "_SHORT_CHUNK", 1 << 62)
    slow = [outcome(raw, len(raw), limits=lim) for lim in cases]
    assert fast == slow
    assert "over the limit of 19" in str(fast[0]) and "40000-byte limit" in str(fast[2])
    assert isinstance(fast[1], GGUFHeader)


def test_seventy_b_header_parses_in_well_under_a_second() -> None:
    """The synthetic Llama-3-70B header (128k tokens, 280k merges): ~30 ms
    on a laptop core; the bound only catches a fall back to per-string
    Python work (~200 ms) or worse on a slow CI machine."""
    from tests.support import synthetic_models as sm

    head, size = sm.llama_gguf(sm.LLAMA_70B_Q4_K_M)
    parse_gguf_header(head, file_size=size)  # compile the regex once
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        header = parse_gguf_header(memoryview(head), file_size=size)
        best = min(best, time.perf_counter() - start)
    assert len(header.get("tokenizer.ggml.merges")) == 280_147  # type: ignore[arg-type]
    assert header.get("tokenizer.ggml.tokens")[-1] == "tok128255"  # type: ignore[index]
    assert best < 0.5


# --------------------------------------------------------------------------
# Purity
# --------------------------------------------------------------------------


def test_parser_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(gguf_module.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {
        "__future__", "struct", "dataclasses", "enum", "typing", "math", "re", "collections"
    }
