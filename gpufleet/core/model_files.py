"""Which files of a repository make up a model (pure: names and sizes in, choices out).

A GGUF repository usually holds one file per quantization (``*-Q4_K_M.gguf``,
``*-Q8_0.gguf``, ...), some split into shards (``*-00001-of-00003.gguf``, the
llama.cpp ``gguf-split`` naming), and sometimes a multimodal projector
(``mmproj-*.gguf``). Users think in quantizations, so files are grouped into one
:class:`GGUFGroup` per (quantization, model) with the total size of its shards.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from dataclasses import dataclass, field

SHARD_RE = re.compile(r"^(?P<base>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.gguf$", re.IGNORECASE)
# Quantization labels as llama.cpp's quantize tool and the big uploaders write them:
# Q4_K_M, Q8_0, IQ2_XS, TQ1_0, BF16, F16, F32, MXFP4_MOE, Unsloth's UD-Q4_K_XL.
QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q\d(?:_[A-Z0-9]{1,4}){0,3}|TQ\d_\d|MXFP4(?:_MOE)?|BF16|FP16|FP32|F16|F32))"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)

# Default when the user names no file: Q4_K_M is the usual quality/size sweet spot
# (llama.cpp's quantize README lists it as "recommended"); then the nearest sizes.
DEFAULT_QUANT_ORDER: tuple[str, ...] = (
    "Q4_K_M", "UD-Q4_K_XL", "Q4_K_S", "Q5_K_M", "Q5_K_S", "Q4_0", "IQ4_XS", "IQ4_NL",
    "Q6_K", "Q8_0", "Q3_K_M", "Q3_K_L", "MXFP4_MOE", "MXFP4", "BF16", "F16", "F32",
)
MMPROJ_ORDER: tuple[str, ...] = ("F16", "BF16", "Q8_0", "F32")


class FileChoiceError(ValueError):
    """The files do not name one model; the message lists what is there."""


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int


@dataclass(frozen=True)
class GGUFGroup:
    """One model in one quantization: a single file or all shards of a split file."""

    quantization: str
    files: tuple[RepoFile, ...]
    shards_expected: int = 1
    mmproj: bool = False

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def complete(self) -> bool:
        return len(self.files) == self.shards_expected

    @property
    def first(self) -> RepoFile:
        return self.files[0]


@dataclass(frozen=True)
class RepoFiles:
    """A repository listing, classified."""

    gguf: list[GGUFGroup] = field(default_factory=list)
    mmproj: list[GGUFGroup] = field(default_factory=list)
    safetensors: list[RepoFile] = field(default_factory=list)
    other: list[RepoFile] = field(default_factory=list)

    def has(self, name: str) -> bool:
        return any(f.path == name for f in self.other + self.safetensors)


def quantization_of(filename: str) -> str:
    """The quantization label in a GGUF file name, upper-cased; "unknown" if none."""
    stem = posixpath.basename(filename)
    m = SHARD_RE.match(stem)
    stem = m.group("base") if m else re.sub(r"\.gguf$", "", stem, flags=re.IGNORECASE)
    found = QUANT_RE.findall(stem)
    return found[-1].upper() if found else "unknown"


def is_mmproj(filename: str) -> bool:
    return "mmproj" in posixpath.basename(filename).lower()


def group_files(files: list[RepoFile]) -> RepoFiles:
    """Classify a listing: GGUF groups (shards joined), projectors, safetensors, the rest."""
    groups: dict[tuple[str, bool], list[RepoFile]] = {}
    expected: dict[tuple[str, bool], int] = {}
    out = RepoFiles()
    for f in sorted(files, key=lambda f: f.path):
        lower = f.path.lower()
        if lower.endswith(".gguf"):
            m = SHARD_RE.match(f.path)
            key = (m.group("base") if m else f.path, is_mmproj(f.path))
            groups.setdefault(key, []).append(f)
            expected[key] = int(m.group("total")) if m else 1
        elif lower.endswith(".safetensors"):
            out.safetensors.append(f)
        else:
            out.other.append(f)
    for (base, mmproj), members in groups.items():
        group = GGUFGroup(quantization_of(members[0].path), tuple(members), expected[(base, mmproj)], mmproj)
        (out.mmproj if mmproj else out.gguf).append(group)
    return out


def _matches(pattern: str, path: str) -> bool:
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(posixpath.basename(path), pattern)


def choose_gguf(listing: RepoFiles, pattern: str | None) -> tuple[GGUFGroup, str]:
    """The group a deploy uses, and a sentence saying why (shown to the user).

    `pattern` is a file name, a path or a glob; matching any shard selects the
    whole split model. Without one, the first of :data:`DEFAULT_QUANT_ORDER`
    present wins, else the smallest group."""
    if not listing.gguf:
        raise FileChoiceError("no GGUF model files (mmproj projectors alone cannot be deployed)")
    if pattern:
        hits = [g for g in listing.gguf if any(_matches(pattern, f.path) for f in g.files)]
        if not hits:
            raise FileChoiceError(f"no GGUF file matches {pattern!r}; available: {_names(listing.gguf)}")
        if len(hits) > 1:
            raise FileChoiceError(
                f"{pattern!r} matches {len(hits)} models ({_names(hits)}); narrow the pattern"
            )
        group, first = hits[0], hits[0].first.path
        if len(group.files) == 1 and pattern in (first, posixpath.basename(first)):
            return _complete(group), ""  # the user named exactly this file: nothing to explain
        return _complete(group), f"{pattern!r} selects {first}"
    rank = {q: i for i, q in enumerate(DEFAULT_QUANT_ORDER)}
    best = min(listing.gguf, key=lambda g: (rank.get(g.quantization, len(rank)), g.size, g.first.path))
    why = f"no --file given: chose {best.quantization} ({best.first.path})"
    if len(listing.gguf) > 1:
        why += f" out of {len(listing.gguf)} quantizations; pass --file to pick another"
    return _complete(best), why


def choose_mmproj(listing: RepoFiles) -> GGUFGroup | None:
    """The projector to deploy beside a vision model: F16 first (what llama.cpp's own
    conversions publish), else the first listed."""
    if not listing.mmproj:
        return None
    rank = {q: i for i, q in enumerate(MMPROJ_ORDER)}
    return min(listing.mmproj, key=lambda g: (rank.get(g.quantization, len(rank)), g.first.path))


def _complete(group: GGUFGroup) -> GGUFGroup:
    if not group.complete:
        raise FileChoiceError(
            f"{group.first.path} is split into {group.shards_expected} shards but the repository "
            f"holds {len(group.files)} of them"
        )
    return group


def _names(groups: list[GGUFGroup]) -> str:
    shown = ", ".join(g.first.path for g in groups[:8])
    return shown + (f", … ({len(groups) - 8} more)" if len(groups) > 8 else "")


def safetensors_weights(listing: RepoFiles, index_shards: list[str] | None) -> list[RepoFile]:
    """The safetensors files of a transformers checkpoint: the shards the index names,
    else the ones at the top level (subfolders such as ``original/`` hold other copies)."""
    by_path = {f.path: f for f in listing.safetensors}
    if index_shards:
        missing = [s for s in index_shards if s not in by_path]
        if missing:
            raise FileChoiceError(f"the index names shards that are not in the repository: {missing[:3]}")
        return [by_path[s] for s in index_shards]
    return [f for f in listing.safetensors if "/" not in f.path]
