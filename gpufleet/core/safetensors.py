"""A hardened safetensors header parser (pure: bytes in, tensors out).

Layout (https://github.com/huggingface/safetensors, "Format"):

    [8 bytes: N, little-endian u64] [N bytes: UTF-8 JSON] [tensor data]

The JSON maps tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets relative to the start of the data section) plus an optional
``"__metadata__"`` string→string map. Like :mod:`gpufleet.core.gguf`, every
length is checked before anything is allocated: ``N`` against a cap and the file
size, each tensor's byte range against ``prod(shape) * dtype size`` and the data
section. Any malformed input raises :class:`SafetensorsError` (or
:class:`SafetensorsTruncated`, which says how many bytes to read and retry),
never ``KeyError``/``RecursionError``/``MemoryError``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Final

# The reference implementation refuses headers over 100 MB (safetensors/src/tensor.rs
# MAX_HEADER_SIZE = 100_000_000); we do the same so a lying N costs nothing.
MAX_HEADER_BYTES: Final = 100_000_000
MAX_TENSORS: Final = 1 << 20
MAX_DIMS: Final = 16
MAX_ELEMENTS: Final = 1 << 62

# dtype -> bits per element, as the safetensors spec names them.
DTYPE_BITS: Final[dict[str, int]] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


class SafetensorsError(ValueError):
    """Malformed safetensors header; the message says what and where."""


class SafetensorsTruncated(SafetensorsError):
    """The buffer ends before the header does; ``needed`` bytes (from the start
    of the file) are required. Exact, since the header length is declared up front."""

    def __init__(self, message: str, needed: int) -> None:
        super().__init__(message)
        self.needed = needed


@dataclass(frozen=True)
class SafeTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # relative to the data section
    end: int

    @property
    def n_bytes(self) -> int:
        return self.end - self.begin

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: tuple[SafeTensor, ...]
    metadata: dict[str, str]
    header_size: int  # 8 + N: where the data section starts

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)


def declared_header_size(buf: bytes | memoryview, file_size: int | None = None) -> int:
    """8 + N, checked against the cap and the file size; needs the first 8 bytes."""
    if len(buf) < 8:
        if file_size is not None and file_size < 8:
            raise SafetensorsError(f"file is {file_size} bytes, too short for a safetensors header")
        raise SafetensorsTruncated("need the 8-byte header length", needed=8)
    (n,) = struct.unpack_from("<Q", buf, 0)
    if n > MAX_HEADER_BYTES:
        raise SafetensorsError(f"header length {n} is over the {MAX_HEADER_BYTES}-byte limit")
    if n < 2:
        raise SafetensorsError(f"header length {n} is too short for a JSON object")
    if file_size is not None and 8 + n > file_size:
        raise SafetensorsError(f"header declares {n} bytes but the file is only {file_size} bytes")
    return 8 + n


def parse_safetensors_header(
    buf: bytes | bytearray | memoryview, file_size: int | None = None
) -> SafetensorsHeader:
    """Parse the header at the start of `buf` (any prefix of the file that
    holds the whole header). Pass `file_size` so tensor ranges are checked
    against the data that exists."""
    view = memoryview(buf).cast("B") if not isinstance(buf, bytes) else buf
    size = declared_header_size(view, file_size)
    if len(view) < size:
        raise SafetensorsTruncated(f"header is {size} bytes, buffer has {len(view)}", needed=size)
    raw = _load_json(bytes(view[8:size]))
    metadata = _metadata(raw.pop("__metadata__", None))
    if len(raw) > MAX_TENSORS:
        raise SafetensorsError(f"{len(raw)} tensors, over the limit of {MAX_TENSORS}")
    tensors = tuple(_tensor(name, entry) for name, entry in raw.items())
    data_size = None if file_size is None else file_size - size
    _check_ranges(tensors, data_size)
    return SafetensorsHeader(tensors=tensors, metadata=metadata, header_size=size)


def _load_json(text: bytes) -> dict[str, object]:
    # The spec pads the header with trailing spaces; JSON ignores them.
    try:
        raw = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SafetensorsError(f"header is not UTF-8: {exc}") from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int-digit limit, deep nesting
        raise SafetensorsError(f"header is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(raw, dict):
        raise SafetensorsError(f"header is a JSON {type(raw).__name__}, expected an object")
    return raw


def _metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise SafetensorsError("__metadata__ must be an object of strings")
    return dict(value)


def _tensor(name: str, entry: object) -> SafeTensor:
    if not isinstance(entry, dict):
        raise SafetensorsError(f"tensor {name!r}: entry is not an object")
    dtype = entry.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise SafetensorsError(f"tensor {name!r}: unknown dtype {dtype!r}")
    shape = _ints(entry.get("shape"), name, "shape", MAX_DIMS)
    offsets = _ints(entry.get("data_offsets"), name, "data_offsets", 2)
    if len(offsets) != 2 or offsets[0] > offsets[1]:
        raise SafetensorsError(f"tensor {name!r}: data_offsets must be [begin, end] with begin <= end")
    tensor = SafeTensor(name, dtype, tuple(shape), offsets[0], offsets[1])
    if tensor.n_elements > MAX_ELEMENTS:
        raise SafetensorsError(f"tensor {name!r}: {tensor.n_elements} elements is over the limit")
    expected = -(-tensor.n_elements * DTYPE_BITS[dtype] // 8)
    if tensor.n_bytes != expected:
        raise SafetensorsError(
            f"tensor {name!r}: {dtype}{list(shape)} needs {expected} bytes but data_offsets span {tensor.n_bytes}"
        )
    return tensor


def _ints(value: object, name: str, field: str, max_len: int) -> list[int]:
    if not isinstance(value, list) or len(value) > max_len:
        raise SafetensorsError(f"tensor {name!r}: {field} must be a list of at most {max_len} integers")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_ELEMENTS for v in value):
        raise SafetensorsError(f"tensor {name!r}: {field} holds a non-integer or out-of-range value")
    return value


def _check_ranges(tensors: tuple[SafeTensor, ...], data_size: int | None) -> None:
    """Ranges must not overlap and must lie inside the data section (the
    reference implementation also requires them to be contiguous; we only
    need them to be honest)."""
    last_end, last_name = 0, ""
    for t in sorted(tensors, key=lambda t: (t.begin, t.end)):
        if t.n_bytes and t.begin < last_end:
            raise SafetensorsError(f"tensors {last_name!r} and {t.name!r} overlap")
        if t.n_bytes:
            last_end, last_name = t.end, t.name
    if data_size is not None and last_end > data_size:
        raise SafetensorsError(
            f"tensor {last_name!r} ends at data byte {last_end}, past the {data_size}-byte data section"
        )


@dataclass(frozen=True)
class SafetensorsIndex:
    """``model.safetensors.index.json``: which shard holds which tensor."""

    weight_map: dict[str, str]
    total_size: int | None

    @property
    def shards(self) -> list[str]:
        return sorted(set(self.weight_map.values()))


def parse_safetensors_index(text: bytes, max_bytes: int = 64 << 20) -> SafetensorsIndex:
    if len(text) > max_bytes:
        raise SafetensorsError(f"index is {len(text)} bytes, over the {max_bytes}-byte limit")
    raw = _load_json(text)
    weight_map = raw.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise SafetensorsError("index has no weight_map")
    if not all(isinstance(v, str) and v and ".." not in v.split("/") for v in weight_map.values()):
        raise SafetensorsError("index weight_map values must be shard file names")
    meta = raw.get("metadata")
    total = meta.get("total_size") if isinstance(meta, dict) else None
    total = int(total) if isinstance(total, int | float) and not isinstance(total, bool) else None
    return SafetensorsIndex(weight_map=dict(weight_map), total_size=total)
