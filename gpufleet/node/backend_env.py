"""The environment a backend process starts with: what an engine needs, never the node's secrets.

A backend runs code the deployment chose (an engine, its plugins, a model's remote code), so
it must not inherit what the node agent holds: its gpufleet credential, a hub token
(``HF_TOKEN``), cloud keys. It gets an allowlist of the node's variables — the system's
basics (PATH, HOME, locale, temp dir), the node's accelerator and threading settings (CUDA,
ROCm, OpenMP, …), engines' own families (``VLLM_*``, ``GGML_*`` …) — then the launch
description's variables (the deployment's own, secrets included, and gpufleet's over them).
Containers never saw the node's environment; this is the process runtime's equivalent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: variables passed through by name
NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    # the node's own library and module search paths (a CUDA toolkit's libraries, gpufleet's
    # source for its xllamacpp launcher): set by whoever runs the node, not by a deployment
    "LD_LIBRARY_PATH", "PYTHONPATH",
    "CUDA_HOME", "CUDA_PATH", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR",
    "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM", "NUMBA_CACHE_DIR",
    "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
})
# Not passed: proxies (their URLs may carry a password; a deployment that needs one sets it,
# as a secret), hub and cloud credentials, gpufleet's own variables.
#: families passed through by prefix (engines' and accelerators' settings; none holds a credential)
PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "HIP_", "ROCM_", "HSA_", "OMP_", "MKL_", "OPENBLAS_", "KMP_",
            "VLLM_", "GGML_", "LLAMA_", "TORCH_", "TRITON_", "NCCL_", "XLA_")
#: never passed through, whatever family they fall in
_SECRETISH = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")


def passes(name: str) -> bool:
    if any(part in name.upper() for part in _SECRETISH):
        return False
    return name in NAMES or name.startswith(PREFIXES)


def backend_env(launch_env: Mapping[str, str], node_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The node's allowlisted variables, then the launch's own (which win)."""
    source = os.environ if node_env is None else node_env
    return {**{k: v for k, v in source.items() if passes(k)}, **launch_env}
