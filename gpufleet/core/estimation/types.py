"""The estimation contract: what callers pass in and get back.

Plain frozen dataclasses, not pydantic models: placement calls :func:`estimate`
thousands of times while it searches, and these cost a fraction of a model's
validation. :class:`gpufleet.core.estimation.summary.ResourceEstimate` is the
pydantic summary stored and returned at the API boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EstimateOptions:
    """One configuration of one instance.

    ``gpu_memory`` lists the total bytes of each GPU the instance would use, in
    device order; empty means CPU only. For llama.cpp with ``--rpc`` that order
    is llama.cpp's: the RPC servers' devices first, then the local GPUs (each
    RPC device's row is what its ``rpc-server`` process holds). ``tensor_split`` gives llama.cpp's
    proportions per GPU (None: proportional to ``gpu_memory``, as llama.cpp
    splits by device memory). ``gpu_layers`` overrides ``--n-gpu-layers``
    (None: what the backend params say, else all layers). For llama.cpp it
    counts the output layer as one more layer, as llama.cpp does: a model of
    N blocks has ``total_layers = N + 1``, ``gpu_layers = N`` leaves the output
    layer on the CPU, and 0 keeps everything on the CPU. ``kv_cache_cpu_bytes``
    is the host RAM of vLLM's extended KV cache (LMCache, ``cpu_gib x 2^30``),
    added to the host usage so placement claims it; 0 without one.
    """

    backend: str = "llama.cpp"
    backend_params: tuple[str, ...] = ()
    gpu_memory: tuple[int, ...] = ()
    tensor_split: tuple[float, ...] | None = None
    gpu_layers: int | None = None
    kv_cache_cpu_bytes: int = 0


@dataclass(frozen=True)
class DeviceUsage:
    """Memory one device holds for the instance, in bytes, by what it is for."""

    device: str  # "cpu" (host RAM) or "gpu:<position in gpu_memory>"
    layers: int = 0
    weights: int = 0
    kv_cache: int = 0
    compute: int = 0
    output: int = 0
    overhead: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.output + self.overhead


@dataclass(frozen=True)
class Estimate:
    """Per-device memory of one instance under one configuration.

    ``claims`` is what placement must reserve on each GPU: the need itself for
    llama.cpp, utilization x card for a vLLM LLM (vLLM pre-allocates that
    fraction whatever the model needs). ``known=False`` carries a reason and no
    trustworthy numbers.
    """

    known: bool
    backend: str
    reason: str | None = None
    #: Assumptions and approximations the figures rest on (shown by ``gpufleet estimate``).
    notes: tuple[str, ...] = ()
    #: vLLM: KV-cache bytes vLLM will allocate on each GPU out of its claim
    #: (its "Available KV cache memory"); empty for other backends.
    kv_cache_available: tuple[int, ...] = ()
    context_size: int = 0
    total_layers: int = 0
    gpu_layers: int = 0
    host: DeviceUsage = field(default_factory=lambda: DeviceUsage("cpu"))
    gpus: tuple[DeviceUsage, ...] = ()
    claims: tuple[int, ...] = ()
    #: Host RAM at the peak of loading, when it exceeds the steady figure (llama.cpp on GPUs:
    #: the mapped file is read in full during upload); 0 means "the steady figure".
    ram_peak: int = 0

    @property
    def ram(self) -> int:
        """Steady host RAM: what placement claims (see :attr:`ram_load_peak`)."""
        return self.host.total

    @property
    def ram_load_peak(self) -> int:
        """Peak RSS while loading. Its excess over :attr:`ram` is clean file-backed
        page cache, which the kernel reclaims under pressure instead of swapping, so
        placement claims the steady figure and reports this one."""
        return max(self.ram_peak, self.host.total)

    @property
    def vram(self) -> tuple[int, ...]:
        return tuple(g.total for g in self.gpus)

    @property
    def offloaded_to_cpu(self) -> bool:
        """Some layers run on the CPU although GPUs were given."""
        return bool(self.gpus) and self.gpu_layers < self.total_layers

    @classmethod
    def unknown(cls, backend: str, reason: str) -> Estimate:
        return cls(known=False, backend=backend, reason=reason)
