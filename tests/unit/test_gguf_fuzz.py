"""Fuzz the GGUF header parser: whatever the bytes, it either returns a
header or raises GGUFError (never IndexError, struct.error, MemoryError,
RecursionError, ...), and does so quickly.

The mutations target what attackers and broken downloads produce: random
bytes, bit flips, truncation, and lengths/counts overwritten with huge
integers, applied to a small but complete header that exercises every
value type, nested arrays, a string array and a tensor table.

Long string arrays are walked by a regex, a chunk of strings at a time,
and tensor rows are read by a fast path, each falling back to a careful
reader; every input is also parsed with the regex chunk shrunk to 2
strings (so that the fuzzed arrays take the regex path) and with both fast
paths off, and all must give the same verdict.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpufleet.core.gguf as gguf_module
from gpufleet.core.gguf import GGUFError, GGUFHeader, GGUFTruncated, parse_gguf_header


def gbytes(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


def gstr(text: str) -> bytes:
    return gbytes(text.encode())


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def tinfo(name: str, dims: list[int], ggml_type: int, offset: int) -> bytes:
    return (
        gstr(name)
        + struct.pack(f"<I{len(dims)}Q", len(dims), *dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


def _valid_file() -> bytes:
    kvs = [
        kv("general.architecture", 8, gstr("llama")),
        kv("general.alignment", 4, struct.pack("<I", 32)),
        kv("llama.block_count", 4, struct.pack("<I", 2)),
        kv("u8", 0, b"\x07"),
        kv("i16", 3, struct.pack("<h", -3)),
        kv("f32", 6, struct.pack("<f", 0.5)),
        kv("b", 7, b"\x01"),
        kv("u64", 10, struct.pack("<Q", 2**40)),
        kv("f64", 12, struct.pack("<d", 2.5)),
        kv("tok", 9, struct.pack("<IQ", 8, 3) + gstr("<s>") + gstr("\u2581a") + gstr("")),
        kv("scores", 9, struct.pack("<IQ", 6, 3) + struct.pack("<3f", 0, -1, -2)),
        kv(
            "nested",
            9,
            struct.pack("<IQ", 9, 2)
            + struct.pack("<IQ", 5, 1)
            + struct.pack("<i", 1)
            + struct.pack("<IQ", 8, 1)
            + gstr("x"),
        ),
    ]
    tensors = [
        tinfo("token_embd.weight", [32, 4], 0, 0),
        tinfo("blk.0.attn_q.weight", [32, 2], 8, 512),  # Q8_0: 2 blocks of 34 bytes
    ]
    body = (
        b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + b"".join(tensors)
    )
    body += b"\0" * (-len(body) % 32)
    return body + b"\0" * (512 + 68)


VALID = _valid_file()
HUGE_INTS = [2**64 - 1, 2**63, 2**63 - 1, 2**62, 2**32 - 1, 2**31, 2**26 + 1, 2**24, 65537, 0]

FUZZ = settings(
    max_examples=300,
    deadline=500,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)


def outcome(buf: bytes | memoryview, file_size: int | None) -> object:
    """The property: a GGUFHeader, or GGUFError with a usable message."""
    try:
        result = parse_gguf_header(buf, file_size)
    except GGUFTruncated as exc:
        assert exc.needed > len(buf)
        assert file_size is None or exc.needed <= file_size
        assert str(exc)
        return ("truncated", exc.needed)
    except GGUFError as exc:
        assert str(exc)
        return ("error", str(exc))
    assert isinstance(result, GGUFHeader)
    assert result.data_offset % result.alignment == 0
    return result


@contextmanager
def fast_paths(regex_chunk: int, row_fast_path: bool = True) -> Iterator[None]:
    """Walk string arrays `regex_chunk` strings per regex match (by default
    only arrays of 1024 strings or more use the regex), and optionally turn
    off the tensor-row fast path, leaving the careful readers alone."""
    saved = gguf_module._SHORT_CHUNK, gguf_module._ROW_TAILS
    gguf_module._SHORT_CHUNK = regex_chunk
    if not row_fast_path:
        gguf_module._ROW_TAILS = ()  # type: ignore[misc]
    try:
        yield
    finally:
        gguf_module._SHORT_CHUNK, gguf_module._ROW_TAILS = saved  # type: ignore[misc]


def check(buf: bytes, file_size: int | None) -> None:
    """bytes and memoryview inputs, and the fast paths (regex walk of string
    arrays, one-shot tensor rows) and the careful readers they fall back
    to, must all reach the same verdict."""
    # repr, not ==: mutated floats are often NaN, which never equals itself
    expected = repr(outcome(buf, file_size))
    assert repr(outcome(memoryview(buf), file_size)) == expected
    with fast_paths(regex_chunk=2):
        assert repr(outcome(buf, file_size)) == expected
        assert repr(outcome(memoryview(buf), file_size)) == expected
    with fast_paths(regex_chunk=1 << 62, row_fast_path=False):
        assert repr(outcome(buf, file_size)) == expected
        assert repr(outcome(memoryview(buf), file_size)) == expected


def test_valid_seed_parses() -> None:
    header = parse_gguf_header(VALID, len(VALID))
    assert header.architecture == "llama" and len(header.tensors) == 2
    assert header.get("nested") == [[1], ["x"]]


@FUZZ
@given(raw=st.binary(max_size=512), file_size=st.none() | st.integers(0, 4096))
def test_random_bytes(raw: bytes, file_size: int | None) -> None:
    check(raw, file_size)


@FUZZ
@given(
    body=st.binary(max_size=256),
    version=st.sampled_from([0, 1, 2, 3, 4, 2**24, 3 << 24, 2**32 - 1]),
    counts=st.tuples(
        st.sampled_from([*HUGE_INTS, 1, 2, 3]), st.sampled_from([*HUGE_INTS, 1, 2, 3])
    ),
)
def test_random_bytes_after_a_valid_prefix(
    body: bytes, version: int, counts: tuple[int, int]
) -> None:
    raw = b"GGUF" + struct.pack("<IQQ", version, *counts) + body
    check(raw, None)
    check(raw, len(raw))


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(VALID) * 8 - 1)),
    st.tuples(st.just("cut"), st.integers(0, len(VALID))),
    st.tuples(st.just("u64"), st.integers(0, len(VALID) - 8), st.sampled_from(HUGE_INTS)),
    st.tuples(st.just("u32"), st.integers(0, len(VALID) - 4), st.sampled_from(HUGE_INTS)),
    st.tuples(st.just("insert"), st.integers(0, len(VALID)), st.sampled_from(HUGE_INTS)),
)


def mutate(data: bytearray, op: tuple) -> bytearray:  # type: ignore[type-arg]
    kind = op[0]
    if kind == "flip" and data:
        data[op[1] // 8 % len(data)] ^= 1 << (op[1] % 8)
    elif kind == "cut":
        del data[op[1] :]
    elif kind == "u64" and op[1] + 8 <= len(data):
        data[op[1] : op[1] + 8] = struct.pack("<Q", op[2])
    elif kind == "u32" and op[1] + 4 <= len(data):
        data[op[1] : op[1] + 4] = struct.pack("<I", op[2] & 0xFFFFFFFF)
    elif kind == "insert":
        data[op[1] : op[1]] = struct.pack("<Q", op[2])
    return data


@FUZZ
@given(
    ops=st.lists(mutation, min_size=1, max_size=4),
    size_mode=st.sampled_from(["none", "exact", "longer"]),
)
def test_mutated_valid_header(ops: list[tuple], size_mode: str) -> None:  # type: ignore[type-arg]
    data = bytearray(VALID)
    for op in ops:
        data = mutate(data, op)
    raw = bytes(data)
    file_size = {"none": None, "exact": len(raw), "longer": len(raw) + 4096}[size_mode]
    check(raw, file_size)
    check(raw[: len(raw) // 2], file_size)  # and a partial read of the same file


@FUZZ
@given(cut=st.integers(0, len(VALID)))
def test_every_prefix_of_valid_file(cut: int) -> None:
    check(VALID[:cut], None)
    check(VALID[:cut], len(VALID))


# Mostly short strings (the regex path), some with two-byte lengths (the loop).
strings = st.lists(
    st.one_of(st.binary(max_size=12), st.binary(min_size=250, max_size=300)), max_size=24
)


@FUZZ
@given(items=strings, ops=st.lists(mutation, max_size=3), cut=st.integers(0, 1 << 16))
def test_string_array_walks_agree(
    items: list[bytes], ops: list[tuple], cut: int  # type: ignore[type-arg]
) -> None:
    body = struct.pack("<IQ", 8, len(items)) + b"".join(gbytes(x) for x in items)
    after = kv("b", 4, struct.pack("<I", 1))
    data = bytearray(b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + kv("a", 9, body) + after)
    for op in ops:
        data = mutate(data, op)
    raw = bytes(data)
    check(raw, None)
    check(raw[: cut % (len(raw) + 1)], len(raw))
    if not ops:
        header = parse_gguf_header(raw)
        assert header.get("a") == [x.decode("utf-8", "replace") for x in items]
