"""A hardened, pure parser for GGUF file headers.

Why our own parser instead of ``gguf.GGUFReader``: the control plane reads
headers of files it does not trust (user uploads, half-finished downloads,
remote byte ranges) and must answer "how big is this model and can it run
here" without numpy, without mapping the whole file, and without ever
hanging or allocating gigabytes because a length field lies. So every
count, length and offset is checked against both the bytes actually present
and a fixed cap *before* anything is allocated, and the only exception that
escapes is :class:`GGUFError` (or its subclass :class:`GGUFTruncated`, which
tells a windowed reader how many more bytes to fetch).

Layout reference (GGUF v2/v3, little-endian)::

    magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv       x  (string key, u32 value_type, value)
    n_tensors  x  (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset)
    padding to `general.alignment` (default 32), then tensor data

where ``string`` is ``u64 length + UTF-8 bytes`` and an array value is
``u32 element_type, u64 count, elements``.

String arrays (a vocabulary and its merges: 400k+ strings in one header)
are returned as :class:`GGUFStringArray`: validated in full while parsing,
but decoded to ``str`` only when an element is first read, because what
callers need from them is almost always just their length.

This module imports only the standard library (a test enforces that
``gpufleet.core`` stays pure).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, overload

__all__ = [
    "DEFAULT_ALIGNMENT",
    "DEFAULT_LIMITS",
    "GGML_TYPE_NAMES",
    "GGML_TYPE_SIZES",
    "GGUFError",
    "GGUFHeader",
    "GGUFStringArray",
    "GGUFTruncated",
    "GGUFValueType",
    "ParseLimits",
    "TensorInfo",
    "parse_gguf_header",
]

GGUF_MAGIC: Final = b"GGUF"
DEFAULT_ALIGNMENT: Final = 32
SUPPORTED_VERSIONS: Final = (2, 3)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class GGUFError(ValueError):
    """Malformed or unsupported GGUF header; message says what and at which byte offset."""


class GGUFTruncated(GGUFError):
    """The buffer ends before the header does.

    ``needed`` is the total number of bytes, counted from the start of the
    file, that are required to continue. It is a lower bound (a string array
    is only known to need 8 bytes per element until its lengths are read),
    so a windowed reader re-reads at least that much and retries; every
    retry makes progress because ``needed`` is always larger than the buffer
    that was passed in.
    """

    def __init__(self, message: str, needed: int) -> None:
        super().__init__(message)
        self.needed = needed


# --------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ParseLimits:
    """Caps that keep parsing bounded in time and memory on hostile input.

    Defaults are far above anything real models use (a large vocabulary is
    ~256k tokens, a model has tens of kv pairs and at most tens of thousands
    of tensors) yet small enough that honouring a lying length can never
    exhaust memory.
    """

    max_kv_count: int = 1 << 16
    max_tensor_count: int = 1 << 20
    max_string_len: int = 16 << 20
    max_array_len: int = 1 << 26
    max_dims: int = 4  # GGML_MAX_DIMS
    max_header_bytes: int = 512 << 20
    max_nesting: int = 4
    # llama.cpp stores names in char[GGML_MAX_NAME=64] and rejects longer ones.
    max_tensor_name_len: int = 63
    # ggml counts elements in int64; 2**62 leaves headroom for byte sizes.
    max_tensor_elements: int = 1 << 62


DEFAULT_LIMITS: Final = ParseLimits()


# --------------------------------------------------------------------------
# ggml types
# --------------------------------------------------------------------------

# ggml type id -> (elements per block, bytes per block), as ggml's type
# traits define them (ggml.h / ggml-common.h). Ids 4, 5 and 31..33, 36..38
# are retired and deliberately absent: a file using them is unloadable.
GGML_TYPE_SIZES: Final[dict[int, tuple[int, int]]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    # Q8_1 is two fp16 (d, s) + 32 int8 = 36 in current ggml-common.h;
    # gguf-py still says 40 (from when d and s were float). Activation-only.
    9: (32, 36),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
    39: (32, 17),  # MXFP4
    40: (64, 36),  # NVFP4
    41: (128, 18),  # Q1_0
    42: (64, 18),  # Q2_0 (fp16 scale + 64 x 2-bit); not yet in gguf-py 0.19
}

GGML_TYPE_NAMES: Final[dict[int, str]] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    9: "Q8_1",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    15: "Q8_K",
    16: "IQ2_XXS",
    17: "IQ2_XS",
    18: "IQ3_XXS",
    19: "IQ1_S",
    20: "IQ4_NL",
    21: "IQ3_S",
    22: "IQ2_S",
    23: "IQ4_XS",
    24: "I8",
    25: "I16",
    26: "I32",
    27: "I64",
    28: "F64",
    29: "IQ1_M",
    30: "BF16",
    34: "TQ1_0",
    35: "TQ2_0",
    39: "MXFP4",
    40: "NVFP4",
    41: "Q1_0",
    42: "Q2_0",
}


# --------------------------------------------------------------------------
# Metadata value types
# --------------------------------------------------------------------------


class GGUFValueType(IntEnum):
    """Metadata value type ids from the GGUF spec."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# Fixed-size scalar value types -> struct format character (all little-endian).
_SCALAR_FORMATS: Final[dict[int, str]] = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
_SCALAR_STRUCTS: Final[dict[int, struct.Struct]] = {
    t: struct.Struct("<" + f) for t, f in _SCALAR_FORMATS.items()
}

_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")

_STRING_MIN_BYTES: Final = 8  # the u64 length of an empty string
_ARRAY_MIN_BYTES: Final = 12  # u32 element type + u64 count
# key (empty string) + u32 type + smallest value (1 byte)
_KV_MIN_BYTES: Final = _STRING_MIN_BYTES + 4 + 1
# name (empty string) + u32 n_dims + u32 type + u64 offset
_TENSOR_INFO_MIN_BYTES: Final = _STRING_MIN_BYTES + 4 + 4 + 8
_INT64_MAX: Final = (1 << 63) - 1
# Strings per regular-expression match when walking a long string array (see
# _skip_strings); arrays shorter than this are walked by the Python loop alone.
_SHORT_CHUNK = 1024
# Longest string the regular expression recognises: one with a one-byte length.
_SHORT_MAX: Final = 255


def _min_value_bytes(value_type: int) -> int:
    """Smallest encoding of one value of a type: what an array of `count`
    elements is guaranteed to need before its elements are read."""
    scalar = _SCALAR_STRUCTS.get(value_type)
    if scalar is not None:
        return scalar.size
    if value_type == GGUFValueType.STRING:
        return _STRING_MIN_BYTES
    return _ARRAY_MIN_BYTES


# --------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------


class GGUFStringArray(Sequence[str]):
    """A metadata string array (e.g. ``tokenizer.ggml.tokens``), decoded on demand.

    Why not a ``list``: decoding a 128k-token vocabulary and its 280k merges
    into ``str`` objects is most of the cost of parsing a large header, yet
    callers mostly ask only ``len()``. The parser has already checked every
    length, cap and bound of the array; this object keeps the array's encoded
    bytes (a private copy, never a view into the caller's buffer, so an mmap
    can be closed and a bytearray reused) and decodes all of it, once, the
    first time an element is read. Decoding is infallible: invalid UTF-8 is
    replaced exactly as in scalar strings.

    It is an immutable :class:`collections.abc.Sequence` of ``str``: ``len``,
    indexing (a slice gives a ``list``), iteration, ``in``, ``index`` and
    ``count`` work, and it compares equal to a ``list`` with the same strings.
    It is deliberately *not* a ``list`` subclass, since C code that sees a
    list (``str.join``, ``json``) reads the list's own storage and would find
    it empty; ``isinstance(x, list)`` is therefore False, and code that
    accepts arrays should test ``isinstance(x, list | GGUFStringArray)``.
    Use ``list(x)`` where a real list is needed.
    """

    __slots__ = ("_count", "_items", "_raw")

    def __init__(self, strings: Iterable[str] = ()) -> None:
        items = list(strings)
        if not all(isinstance(s, str) for s in items):
            raise TypeError("GGUFStringArray holds only str")
        self._raw: bytes | None = None
        self._count = len(items)
        self._items: list[str] | None = items

    @classmethod
    def _from_encoded(cls, raw: bytes, count: int) -> GGUFStringArray:
        """Wrap `count` length-prefixed strings that the parser has validated."""
        self = cls.__new__(cls)
        self._raw = raw
        self._count = count
        self._items = None
        return self

    def _list(self) -> list[str]:
        items = self._items
        if items is None:
            assert self._raw is not None
            items = self._items = _decode_strings(self._raw, self._count)
        return items

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        return self._list()[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._list())

    def __reversed__(self) -> Iterator[str]:
        return reversed(self._list())

    def __contains__(self, value: object) -> bool:
        return value in self._list()

    def index(self, value: object, start: int = 0, stop: int | None = None) -> int:
        stop = self._count if stop is None else stop
        return self._list().index(value, start, stop)  # type: ignore[arg-type]

    def count(self, value: object) -> int:
        return self._list().count(value)  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GGUFStringArray):
            if self._count != other._count:
                return False
            if self._raw is not None and self._raw == other._raw:
                return True  # same bytes, same strings; no decoding needed
            return self._list() == other._list()
        if isinstance(other, list):
            return self._count == len(other) and self._list() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # compares equal to lists, which are unhashable

    def __repr__(self) -> str:
        shown = 8
        if self._count <= shown:
            return f"GGUFStringArray({self._list()!r})"
        if self._items is not None:
            head = self._items[:shown]
        else:  # decode just what is shown
            head = _decode_strings(self._raw or b"", shown, partial=True)
        return f"GGUFStringArray({head!r} + {self._count - shown} more)"

    def __reduce__(self) -> tuple[object, ...]:
        if self._raw is not None:
            return (GGUFStringArray._from_encoded, (self._raw, self._count))
        return (GGUFStringArray, (self._list(),))


@dataclass(frozen=True)
class TensorInfo:
    """One row of the tensor-info table, with sizes already worked out."""

    name: str
    shape: tuple[int, ...]  # GGUF order (ne[0] first = innermost)
    ggml_type: int
    offset: int  # relative to data section start
    n_elements: int
    n_bytes: int  # exact bytes by ggml type block sizes

    @property
    def type_name(self) -> str:
        """Human-readable ggml type, for logs and error messages."""
        return GGML_TYPE_NAMES.get(self.ggml_type, f"type{self.ggml_type}")


@dataclass(frozen=True)
class GGUFHeader:
    """Everything before the tensor data: metadata and the tensor table."""

    version: int
    # key -> python value: int/float/bool/str, a list for numeric and nested
    # arrays, a GGUFStringArray for string arrays
    metadata: dict[str, object]
    tensors: tuple[TensorInfo, ...]
    alignment: int  # general.alignment or 32
    header_size: int  # bytes up to end of tensor-info table (before padding)
    data_offset: int  # aligned start of tensor data

    def get(self, key: str, default: object = None) -> object:
        """Metadata lookup that reads like ``dict.get``."""
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str | None:
        """``general.architecture``; None when missing or not a string, so
        callers need only one check before using it as a key prefix."""
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    def arch_value(self, suffix: str, default: object = None) -> object:
        """Architecture-scoped keys (``llama.block_count``) without the caller
        repeating the prefix, which differs per model family."""
        arch = self.architecture
        if arch is None:
            return default
        return self.metadata.get(f"{arch}.{suffix}", default)

    @property
    def tensor_bytes(self) -> int:
        """Exact bytes of all tensor data: the weights' memory footprint."""
        return sum(t.n_bytes for t in self.tensors)


# --------------------------------------------------------------------------
# Cursor
# --------------------------------------------------------------------------


class _Cursor:
    """A bounds-checked read position in the header buffer.

    All reads funnel through :meth:`require`, which is where a short buffer
    becomes either :class:`GGUFTruncated` (read more and retry) or a final
    :class:`GGUFError` (the file itself is too short, or the header would
    exceed the size cap).
    """

    __slots__ = ("data", "end", "file_size", "limits", "pos")

    def __init__(
        self,
        data: bytes | memoryview,
        file_size: int | None,
        limits: ParseLimits,
    ) -> None:
        self.data = data
        # Bytes past the header cap are treated as absent, so an oversized
        # header fails the same way whether or not the caller read it all.
        self.end = min(len(data), limits.max_header_bytes)
        self.pos = 0
        self.file_size = file_size
        self.limits = limits

    def require(self, n_bytes: int, what: str) -> None:
        """Ensure `n_bytes` are readable at the cursor, or explain why not."""
        needed = self.pos + n_bytes
        if needed <= self.end:
            return
        raise self.shortfall(needed, n_bytes, what)

    def shortfall(self, needed: int, n_bytes: int, what: str) -> GGUFError:
        """Classify a read past the buffer end (see class docstring)."""
        at = f"{what} at byte offset {self.pos}"
        if needed > self.limits.max_header_bytes:
            return GGUFError(
                f"{at} declares {n_bytes} bytes, which would make the header "
                f"{needed} bytes, over the {self.limits.max_header_bytes}-byte limit"
            )
        if self.file_size is not None and needed > self.file_size:
            return GGUFError(
                f"{at} declares {n_bytes} bytes (to byte {needed}) "
                f"but file is only {self.file_size} bytes"
            )
        return GGUFTruncated(
            f"{at} needs {n_bytes} bytes but the buffer ends at byte {self.end}; "
            f"read at least {needed} bytes and retry",
            needed=needed,
        )

    def past_end(self, start: int, n_bytes: int, then: int, what: str) -> GGUFError:
        """The error for `n_bytes` at absolute offset `start` that are not all
        in the buffer; `then` is the minimum still to come after them, which
        makes the truncation hint a tighter lower bound."""
        self.pos = start
        return self.shortfall(start + n_bytes + then, n_bytes + then, what)

    def u32(self, what: str) -> int:
        self.require(4, what)
        (value,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(value)

    def u64(self, what: str) -> int:
        self.require(8, what)
        (value,) = _U64.unpack_from(self.data, self.pos)
        self.pos += 8
        return int(value)

    def string(self, what: str, max_len: int | None = None) -> str:
        """Read a length-prefixed UTF-8 string; invalid UTF-8 is replaced,
        not fatal, because metadata text is informational."""
        start = self.pos
        length = self.u64(f"{what} length")
        cap = self.limits.max_string_len if max_len is None else max_len
        if length > cap:
            raise GGUFError(
                f"{what} at byte offset {start} has length {length}, over the limit of {cap}"
            )
        self.require(length, what)
        text = str(self.data[self.pos : self.pos + length], "utf-8", "replace")
        self.pos += length
        return text


# --------------------------------------------------------------------------
# Metadata values
# --------------------------------------------------------------------------


def _read_value(cur: _Cursor, value_type: int, what: str, depth: int) -> object:
    """Decode one metadata value of a known type id."""
    scalar = _SCALAR_STRUCTS.get(value_type)
    if scalar is not None:
        cur.require(scalar.size, what)
        (value,) = scalar.unpack_from(cur.data, cur.pos)
        cur.pos += scalar.size
        return value
    if value_type == GGUFValueType.STRING:
        return cur.string(what)
    if value_type == GGUFValueType.ARRAY:
        return _read_array(cur, what, depth + 1)
    raise GGUFError(f"{what} at byte offset {cur.pos - 4} has unknown value type {value_type}")


def _read_array(cur: _Cursor, what: str, depth: int) -> list[object] | GGUFStringArray:
    """Decode an array, checking its count against the cap and the bytes
    remaining before allocating anything for it."""
    start = cur.pos
    if depth > cur.limits.max_nesting:
        raise GGUFError(
            f"{what} at byte offset {start} nests arrays {depth} deep, "
            f"over the limit of {cur.limits.max_nesting}"
        )
    elem_type = cur.u32(f"{what} array element type")
    if elem_type not in _VALID_VALUE_TYPES:
        raise GGUFError(f"{what} at byte offset {start} has unknown array element type {elem_type}")
    count = cur.u64(f"{what} array length")
    if count > cur.limits.max_array_len:
        raise GGUFError(
            f"{what} at byte offset {start} has array length {count}, "
            f"over the limit of {cur.limits.max_array_len}"
        )
    cur.require(count * _min_value_bytes(elem_type), f"{what} array of {count} elements")
    return _ARRAY_READERS.get(elem_type, _read_array_of_arrays)(cur, elem_type, count, what, depth)


def _read_scalar_array(
    cur: _Cursor, elem_type: int, count: int, what: str, depth: int
) -> list[object]:
    """Fixed-size elements decode in one struct call: a 150k-entry score
    table must not cost 150k Python-level reads."""
    fmt = f"<{count}{_SCALAR_FORMATS[elem_type]}"
    values = list(struct.unpack_from(fmt, cur.data, cur.pos))
    cur.pos += struct.calcsize(fmt)
    return values


def _read_string_array(
    cur: _Cursor, elem_type: int, count: int, what: str, depth: int
) -> GGUFStringArray:
    """The vocabulary hot path (400k+ strings in a large header). Every
    length is checked here, but nothing is decoded: the array's bytes are
    copied once (one memcpy; never a view that would pin the caller's buffer)
    and :class:`GGUFStringArray` decodes them if an element is ever read."""
    start = cur.pos
    _skip_strings(cur, count, what)
    return GGUFStringArray._from_encoded(bytes(cur.data[start : cur.pos]), count)


def _skip_strings(cur: _Cursor, count: int, what: str) -> None:
    """Advance the cursor over `count` strings, with every check of
    :func:`_walk_strings`.

    A Python loop costs ~100 ns per string, which alone exceeds the budget
    for a 70B-class header. Real vocabulary strings are short, so their u64
    length is one byte followed by seven zeros, and a chunk of such strings
    is a regular language the C regex engine walks in a single match, without
    creating an object per string (see :func:`_short_strings`). A chunk that
    does not match (a long string, or the buffer ends inside it) is walked
    again by the loop, which accepts the same inputs as the regex and more,
    and raises the exact error; so results and errors, ``needed`` included,
    are those of the loop alone. The regex is only used where it cannot
    accept what the loop would reject: the string cap must admit 255 bytes,
    and matching stops at the buffer end (already clamped to the header cap).
    """
    pos, done, chunk = cur.pos, 0, _SHORT_CHUNK
    if count >= chunk and cur.limits.max_string_len >= _SHORT_MAX:
        match = _short_strings(chunk).match
        data, end = cur.data, cur.end
        while count - done >= chunk:
            m = match(data, pos, end)
            if m is not None:
                pos = m.end()
            else:
                pos = _walk_strings(cur, pos, done, done + chunk, count, what)
            done += chunk
        del m  # a match object refers to the (possibly mmapped) buffer
    cur.pos = _walk_strings(cur, pos, done, count, count, what)


def _walk_strings(cur: _Cursor, pos: int, first: int, stop: int, count: int, what: str) -> int:
    """Check strings ``first..stop-1`` of a `count`-string array starting at
    absolute offset `pos`, returning the offset after them: each length must
    be readable, within the string cap, and its bytes within the buffer.
    Reads the buffer in place (a memoryview included); slices nothing."""
    data, end, cap = cur.data, cur.end, cur.limits.max_string_len
    unpack_len = _U64.unpack_from
    for i in range(first, stop):
        if pos + 8 > end:
            raise cur.past_end(pos, 8, (count - i - 1) * 8, f"{what}[{i}] length")
        (length,) = unpack_len(data, pos)
        if length > cap:
            raise GGUFError(
                f"{what}[{i}] at byte offset {pos} has length {length}, over the limit of {cap}"
            )
        pos += 8
        if pos + length > end:
            raise cur.past_end(pos, length, (count - i - 1) * 8, f"{what}[{i}]")
        pos += length
    return pos


_SHORT_PATTERNS: dict[int, re.Pattern[bytes]] = {}


def _short_strings(chunk: int) -> re.Pattern[bytes]:
    """A regex matching exactly `chunk` consecutive strings of at most 255
    bytes. Each string is one alternative per length n: the byte n, the
    seven zero bytes of the rest of the u64 length, then ``.{n}``, which
    skips the string in O(1). The length byte lets only one alternative
    match; they are in increasing length, the order the engine tries them
    in, as short strings are the common case.

    Engine steps per string are what this costs (~50 ns), so: the zeros are
    a backreference to the first string's zeros (one step instead of seven,
    ~20% of the walk), and both repeats are possessive, which also spares
    the engine a backtracking frame per string. There is nothing to
    backtrack into anyway, so a chunk that does not match fails in time
    linear in its size. Compiled on first use (a few ms), not at import."""
    pattern = _SHORT_PATTERNS.get(chunk)
    if pattern is None:
        one = b"|".join(
            b"\\x%02x\\1" % n + (b".{%d}+" % n if n else b"") for n in range(_SHORT_MAX + 1)
        )
        source = b"(?=.(\\x00{7}))(?:%s){%d}+" % (one, chunk)
        pattern = _SHORT_PATTERNS[chunk] = re.compile(source, re.DOTALL)
    return pattern


def _decode_strings(raw: bytes, count: int, partial: bool = False) -> list[str]:
    """Decode `count` length-prefixed strings from `raw`, bytes the parser has
    already validated (with `partial`, only the first `count` of them).
    Decoding all strings with one ``decode`` call by joining on NUL, which
    UTF-8 never uses inside a multi-byte sequence, so replacement of invalid
    bytes is the same as decoding each string alone. Strings that themselves
    contain NUL (legal, if odd) fall back to per-string decoding."""
    unpack_len = _U64.unpack_from
    pieces: list[bytes] = [b""] * count
    pos = 0
    for i in range(count):
        (length,) = unpack_len(raw, pos)
        pos += 8
        pieces[i] = raw[pos : pos + length]
        pos += length
    if pos != len(raw) and not partial:
        raise ValueError(f"string array bytes hold more than {count} strings")
    if not pieces:
        return []
    joined = b"\x00".join(pieces)
    if joined.count(b"\x00") == count - 1:
        return joined.decode("utf-8", "replace").split("\x00")
    return [p.decode("utf-8", "replace") for p in pieces]


def _read_array_of_arrays(
    cur: _Cursor, elem_type: int, count: int, what: str, depth: int
) -> list[object]:
    """Nested arrays are rare and small; recursion depth is already capped."""
    return [_read_array(cur, f"{what}[{i}]", depth + 1) for i in range(count)]


_VALID_VALUE_TYPES: Final = frozenset(int(t) for t in GGUFValueType)
# element type -> reader(cursor, element type, count, what, depth)
_ARRAY_READERS: Final = {
    **{t: _read_scalar_array for t in _SCALAR_FORMATS},
    GGUFValueType.STRING: _read_string_array,
}


def _read_metadata(cur: _Cursor, kv_count: int) -> dict[str, object]:
    """Read the key/value section; duplicate keys are rejected because
    llama.cpp rejects them, and silently picking one would hide that."""
    cur.require(kv_count * _KV_MIN_BYTES, f"{kv_count} metadata entries")
    metadata: dict[str, object] = {}
    for index in range(kv_count):
        start = cur.pos
        key = cur.string(f"metadata key #{index}")
        if key in metadata:
            raise GGUFError(f"duplicate metadata key {key!r} at byte offset {start}")
        value_type = cur.u32(f"value type of {key!r}")
        if value_type not in _VALID_VALUE_TYPES:
            raise GGUFError(
                f"metadata key {key!r} at byte offset {cur.pos - 4} "
                f"has unknown value type {value_type}"
            )
        metadata[key] = _read_value(cur, value_type, f"value of {key!r}", depth=0)
    return metadata


def _alignment_from(metadata: dict[str, object]) -> int:
    """``general.alignment`` governs tensor offsets; a bad one would make
    every offset check meaningless, so it is validated strictly."""
    value = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if isinstance(value, bool) or not isinstance(value, int):
        raise GGUFError(f"general.alignment must be an integer, got {value!r}")
    if value <= 0 or value & (value - 1):
        raise GGUFError(f"general.alignment must be a power of two > 0, got {value}")
    return value


# --------------------------------------------------------------------------
# Tensor table
# --------------------------------------------------------------------------


def _read_tensor_infos(cur: _Cursor, n_tensors: int, alignment: int) -> tuple[TensorInfo, ...]:
    """The tensor table, one row at a time.

    Most rows are valid, and the careful reader below spends most of its
    time on bookkeeping for errors that do not happen (per-field bound
    checks and error-message text built in advance). So each row is first
    tried by a fast path that reads the whole row in two struct calls and
    makes every check of :func:`_read_tensor_info`, but builds no text; a row
    that fails any of them is read again by :func:`_read_tensor_info` from
    its start, which raises the precise error (or, where the fast path is
    merely narrower, e.g. more dims than it has a layout for, reads it)."""
    data, end, limits = cur.data, cur.end, cur.limits
    max_name, max_dims = limits.max_tensor_name_len, limits.max_dims
    max_elements = limits.max_tensor_elements
    unpack_u64, unpack_u32 = _U64.unpack_from, _U32.unpack_from
    sizes_of = GGML_TYPE_SIZES.get
    seen: set[str] = set()
    out: list[TensorInfo] = []
    for index in range(n_tensors):
        pos = cur.pos
        row = None
        if pos + 8 <= end:
            (name_len,) = unpack_u64(data, pos)
            at = pos + 8 + name_len
            if name_len <= max_name and at + 4 <= end:
                (n_dims,) = unpack_u32(data, at)
                if n_dims <= max_dims and n_dims < len(_ROW_TAILS):
                    tail = _ROW_TAILS[n_dims]
                    stop = at + 4 + tail.size
                    if stop <= end:
                        row = tail.unpack_from(data, at + 4)
        if row is not None:
            shape, ggml_type, offset = row[:-2], row[-2], row[-1]
            sizes = sizes_of(ggml_type)
            n_elements = 1
            for dim in shape:
                n_elements *= dim
                if dim > _INT64_MAX or n_elements > max_elements:
                    sizes = None
            name = str(data[pos + 8 : at], "utf-8", "replace")
            if (
                sizes is not None
                and not offset % alignment
                and not (shape[0] if shape else 1) % sizes[0]
                and name not in seen
            ):
                seen.add(name)
                n_bytes = n_elements // sizes[0] * sizes[1]
                out.append(TensorInfo(name, shape, ggml_type, offset, n_elements, n_bytes))
                cur.pos = stop
                continue
        out.append(_read_tensor_info(cur, index, alignment, seen))
    return tuple(out)


# n_dims -> layout of the rest of a tensor-info row: ne[n_dims], ggml type, offset.
_ROW_TAILS: Final = tuple(struct.Struct(f"<{n}QIQ") for n in range(DEFAULT_LIMITS.max_dims + 1))


def _read_tensor_info(cur: _Cursor, index: int, alignment: int, seen: set[str]) -> TensorInfo:
    """Read and validate one tensor-info row the way llama.cpp's loader
    would, so that "parses here" implies "loads there"."""
    start = cur.pos
    limits = cur.limits
    name = cur.string(f"tensor #{index} name", max_len=limits.max_tensor_name_len)
    if name in seen:
        raise GGUFError(f"duplicate tensor name {name!r} at byte offset {start}")
    seen.add(name)
    n_dims = cur.u32(f"tensor {name!r} n_dims")
    if n_dims > limits.max_dims:
        raise GGUFError(
            f"tensor {name!r} at byte offset {start} has n_dims {n_dims}, "
            f"over the limit of {limits.max_dims}"
        )
    shape = _read_dims(cur, name, n_dims, start)
    ggml_type = cur.u32(f"tensor {name!r} type")
    sizes = GGML_TYPE_SIZES.get(ggml_type)
    if sizes is None:
        raise GGUFError(f"tensor {name!r} at byte offset {start} has unknown ggml type {ggml_type}")
    offset = cur.u64(f"tensor {name!r} offset")
    if offset % alignment:
        raise GGUFError(
            f"tensor {name!r} at byte offset {start}: data offset {offset} "
            f"is not a multiple of alignment {alignment}"
        )
    n_elements, n_bytes = _tensor_size(name, shape, ggml_type, sizes)
    return TensorInfo(name, shape, ggml_type, offset, n_elements, n_bytes)


def _read_dims(cur: _Cursor, name: str, n_dims: int, start: int) -> tuple[int, ...]:
    """Dimensions are u64 on disk but int64 in ggml; anything past INT64_MAX
    is a negative size there, and the product must stay well below overflow."""
    cur.require(8 * n_dims, f"tensor {name!r} dims")
    shape = struct.unpack_from(f"<{n_dims}Q", cur.data, cur.pos)
    cur.pos += 8 * n_dims
    n_elements = 1
    for dim in shape:
        if dim > _INT64_MAX:
            raise GGUFError(
                f"tensor {name!r} at byte offset {start} has a negative dimension ({dim} as u64)"
            )
        n_elements *= dim
        if n_elements > cur.limits.max_tensor_elements:
            raise GGUFError(
                f"tensor {name!r} at byte offset {start} with shape {shape} has more than "
                f"{cur.limits.max_tensor_elements} elements (overflow)"
            )
    return tuple(int(d) for d in shape)


def _tensor_size(
    name: str, shape: tuple[int, ...], ggml_type: int, sizes: tuple[int, int]
) -> tuple[int, int]:
    """Elements and exact bytes. ggml quantizes along rows, so the innermost
    dimension (not just the total) must be a whole number of blocks."""
    block_elems, block_bytes = sizes
    n_elements = 1
    for dim in shape:
        n_elements *= dim
    innermost = shape[0] if shape else 1
    if innermost % block_elems:
        raise GGUFError(
            f"tensor {name!r} of type {GGML_TYPE_NAMES[ggml_type]} has ne[0]={innermost}, "
            f"not a multiple of the block size {block_elems}"
        )
    return n_elements, n_elements // block_elems * block_bytes


def _check_data_ranges(
    tensors: tuple[TensorInfo, ...], data_offset: int, file_size: int | None
) -> None:
    """With the file size known, a tensor that runs past the end means a
    truncated download; say so now rather than when the runtime mmaps it."""
    if file_size is None:
        return
    room = file_size - data_offset
    for t in tensors:
        if t.offset + t.n_bytes > room:
            raise GGUFError(
                f"tensor {t.name!r} data [{data_offset + t.offset}, "
                f"{data_offset + t.offset + t.n_bytes}) extends beyond the end of "
                f"the file ({file_size} bytes)"
            )


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def _read_prefix(cur: _Cursor) -> tuple[int, int, int]:
    """Magic, version and the two section counts, with the version checks
    that give the clearest message for the most common wrong files."""
    magic = bytes(cur.data[0:4])
    if magic != GGUF_MAGIC[: len(magic)]:  # reject wrong files even from a short prefix
        raise GGUFError(f"bad magic {magic!r} at byte offset 0, expected {GGUF_MAGIC!r}")
    cur.require(4, "magic")
    if magic != GGUF_MAGIC:
        raise GGUFError(f"bad magic {magic!r} at byte offset 0, expected {GGUF_MAGIC!r}")
    cur.pos = 4
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        raise GGUFError(_version_problem(version))
    n_tensors = cur.u64("tensor count")
    if n_tensors > cur.limits.max_tensor_count:
        raise GGUFError(
            f"tensor count {n_tensors} at byte offset 8 is over the limit of "
            f"{cur.limits.max_tensor_count}"
        )
    n_kv = cur.u64("metadata kv count")
    if n_kv > cur.limits.max_kv_count:
        raise GGUFError(
            f"metadata kv count {n_kv} at byte offset 16 is over the limit of "
            f"{cur.limits.max_kv_count}"
        )
    return version, n_tensors, n_kv


def _version_problem(version: int) -> str:
    """Explain an unsupported version field, recognising the two common
    causes (the pre-2023 v1 layout and a big-endian file) by name."""
    if version == 1:
        return "GGUF version 1 is not supported (32-bit counts); re-convert the model to v3"
    swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
    if swapped in (1, 2, 3):
        return (
            f"big-endian GGUF file (version field reads {version:#x}, i.e. v{swapped} "
            "byte-swapped) is not supported"
        )
    return f"unsupported GGUF version {version} at byte offset 4 (supported: 2, 3)"


def _as_view(buf: bytes | bytearray | memoryview) -> bytes | memoryview:
    """Slicing a memoryview copies nothing, so a caller may pass an mmap of
    a huge file; bytes is kept as is since it is the fastest to slice."""
    if isinstance(buf, bytes):
        return buf
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def parse_gguf_header(
    buf: bytes | bytearray | memoryview,
    file_size: int | None = None,
    *,
    limits: ParseLimits = DEFAULT_LIMITS,
) -> GGUFHeader:
    """Parse the GGUF header at the start of `buf`.

    `buf` may be any prefix of the file. If it ends inside the header,
    :class:`GGUFTruncated` says how many bytes are needed; pass `file_size`
    when known so that lengths pointing past the end of the file are
    reported as corruption instead of as a request for more bytes, and so
    that tensor data ranges are checked against the file.
    """
    if file_size is not None and file_size < 0:
        raise GGUFError(f"file_size must be >= 0, got {file_size}")
    data = _as_view(buf)
    if file_size is not None and len(data) > file_size:
        data = data[:file_size]
    cur = _Cursor(data, file_size, limits)
    version, n_tensors, n_kv = _read_prefix(cur)
    metadata = _read_metadata(cur, n_kv)
    alignment = _alignment_from(metadata)
    cur.require(n_tensors * _TENSOR_INFO_MIN_BYTES, f"{n_tensors} tensor infos")
    tensors = _read_tensor_infos(cur, n_tensors, alignment)
    header_size = cur.pos
    data_offset = -(-header_size // alignment) * alignment
    _check_data_ranges(tensors, data_offset, file_size)
    return GGUFHeader(
        version=version,
        metadata=metadata,
        tensors=tensors,
        alignment=alignment,
        header_size=header_size,
        data_offset=data_offset,
    )
