"""Read a GGUF or safetensors header through a :class:`RangeReader`, prefix only.

GGUF: a first window, then extensions only when the parser reports
:class:`GGUFTruncated`. Each extension fetches only the *new* bytes. The
parser's ``needed`` is a lower bound (a string array is known to need 8 bytes per
element until the strings are read), so an extension asks for ``needed`` plus
:data:`EXTENSION_SLACK` (4 MiB): the bytes read never exceed the header by more
than 4 MiB (``needed`` ≤ header size), and two extensions cover a 128k-token
vocabulary with its 280k merges (≈ 8.8 MiB header: 3 range requests in all).

safetensors: the header length is the first 8 bytes, so the second read (if
the first window was short) is exact.
"""

from __future__ import annotations

import mmap

from gpufleet.core.gguf import GGUFError, GGUFHeader, GGUFTruncated, parse_gguf_header
from gpufleet.core.safetensors import (
    SafetensorsError,
    SafetensorsHeader,
    SafetensorsTruncated,
    parse_safetensors_header,
)
from gpufleet.sources.errors import ModelSourceError, NotAModel
from gpufleet.sources.range_reader import LocalRangeReader, RangeReader

GGUF_FIRST_WINDOW = 2 << 20
EXTENSION_SLACK = 4 << 20
SAFETENSORS_FIRST_WINDOW = 256 << 10
MAX_EXTENSIONS = 64  # parser progress is guaranteed; this only bounds a pathological file


class _Prefix:
    """The bytes read so far from the start of the file; grows by appending."""

    def __init__(self, reader: RangeReader) -> None:
        self.reader = reader
        self.buf = bytearray()

    def extend_to(self, want: int) -> None:
        want = min(want, self.reader.size)
        if want > len(self.buf):
            self.buf += self.reader.read(len(self.buf), want)

    @property
    def complete(self) -> bool:
        return len(self.buf) >= self.reader.size


def read_gguf_header(reader: RangeReader, first_window: int = GGUF_FIRST_WINDOW) -> GGUFHeader:
    if isinstance(reader, LocalRangeReader) and reader.size:
        return _read_mapped(reader)
    prefix = _Prefix(reader)
    prefix.extend_to(first_window)
    if prefix.buf[:4] != b"GGUF":
        raise NotAModel(f"{reader.name} is not a valid GGUF file (it does not start with the GGUF magic)")
    for _ in range(MAX_EXTENSIONS):
        try:
            return parse_gguf_header(bytes(prefix.buf), file_size=reader.size)
        except GGUFTruncated as exc:
            if prefix.complete:
                raise ModelSourceError(f"{reader.name}: GGUF header ends past the end of the file") from exc
            prefix.extend_to(exc.needed + EXTENSION_SLACK)
        except GGUFError as exc:
            raise ModelSourceError(f"{reader.name} is not a valid GGUF file: {exc}") from exc
    raise ModelSourceError(f"{reader.name}: GGUF header still incomplete after {MAX_EXTENSIONS} reads")


def _read_mapped(reader: LocalRangeReader) -> GGUFHeader:
    """Local files are parsed from an mmap in one pass: the parser touches only
    the header's pages, and no window is ever re-parsed. Errors are raised after
    the map is closed (a live traceback would pin views into it)."""
    error: str | None = None
    with reader.path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[:4] != b"GGUF":
            error = f"{reader.name} is not a valid GGUF file (it does not start with the GGUF magic)"
        else:
            view = memoryview(mm)
            try:
                header = parse_gguf_header(view, file_size=reader.size)
            except GGUFTruncated:
                error = f"{reader.name}: GGUF header ends past the end of the file"
            except GGUFError as exc:
                error = f"{reader.name} is not a valid GGUF file: {exc}"
            view.release()
    if error is not None:
        raise (NotAModel if "magic" in error else ModelSourceError)(error)
    reader.stats.requests += 1
    reader.stats.bytes += header.header_size
    return header


def read_safetensors_header(
    reader: RangeReader, first_window: int = SAFETENSORS_FIRST_WINDOW
) -> SafetensorsHeader:
    prefix = _Prefix(reader)
    prefix.extend_to(first_window)
    for _ in range(3):
        try:
            return parse_safetensors_header(bytes(prefix.buf), file_size=reader.size)
        except SafetensorsTruncated as exc:
            prefix.extend_to(exc.needed)
        except SafetensorsError as exc:
            raise ModelSourceError(f"{reader.name} is not a valid safetensors file: {exc}") from exc
    raise ModelSourceError(f"{reader.name}: safetensors header could not be read")
