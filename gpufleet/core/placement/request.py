"""What is being placed: one deployment's model, backend and placement spec, and
a cache of its estimates.

The estimate of a replica depends only on the device configuration (the card
sizes, the split, the number of GPU layers), never on which worker it is, so
placing 1,000 replicas on 2,000 identical GPUs computes the single-GPU
estimate once per card size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gpufleet.core.backends.kv_cache import ram_claim_bytes
from gpufleet.core.backends.registry import with_capability
from gpufleet.core.estimation import Estimate, EstimateOptions, estimate
from gpufleet.core.metadata import ModelMetadata
from gpufleet.core.placement_spec import PlacementSpec
from gpufleet.core.schemas import DeploymentConfig, ModelSource
from gpufleet.core.selectors import GpuRef, WorkerSelector, parse_gpus

#: Backends that can run without a GPU (pure CPU or partially offloaded).
CPU_CAPABLE = frozenset(with_capability("cpu_offloading"))
#: Backends whose LLMs pre-allocate a fraction of each card: their GPUs are not shared.
EXCLUSIVE_GPU = frozenset(with_capability("exclusive_gpus"))
#: Backends that can split one instance across workers (llama.cpp RPC servers).
DISTRIBUTABLE = frozenset(with_capability("distributed"))

Estimator = Callable[[ModelMetadata | None, EstimateOptions], Estimate]


@dataclass(frozen=True)
class PlacementRequest:
    """One deployment's replicas to place. ``source`` identifies the model files
    (for the locality scorer); ``deployment`` keeps manual GPU partitions apart."""

    deployment: str
    metadata: ModelMetadata | None
    backend: str = "llama.cpp"
    backend_params: tuple[str, ...] = ()
    spec: PlacementSpec = field(default_factory=PlacementSpec)
    source: str = ""
    #: host RAM of vLLM's extended KV cache (LMCache), claimed with the instance's RAM
    kv_cache_cpu_bytes: int = 0

    @classmethod
    def from_config(cls, name: str, config: DeploymentConfig, metadata: ModelMetadata | None) -> PlacementRequest:
        """The request for an instance of deployment ``name`` with this configuration."""
        return cls(deployment=name, metadata=metadata, backend=config.backend,
                   backend_params=tuple(config.backend_params), spec=config.placement,
                   source=source_key(config.source), kv_cache_cpu_bytes=ram_claim_bytes(config.kv_cache))

    @property
    def selector(self) -> WorkerSelector:
        return WorkerSelector.parse(self.spec.worker_selector)

    @property
    def manual_gpus(self) -> tuple[GpuRef, ...]:
        return parse_gpus(self.spec.gpu_selector)

    @property
    def exclusive(self) -> bool:
        category = self.metadata.category if self.metadata else "llm"
        return self.backend in EXCLUSIVE_GPU and category == "llm"


def source_key(source: ModelSource) -> str:
    """The model's identity for file locality: path, or hub repo/file (@revision)."""
    key = source.describe()
    return f"{key}@{source.revision}" if source.revision else key


class EstimateCache:
    """Memoised :func:`gpufleet.core.estimation.estimate` for one request."""

    def __init__(self, request: PlacementRequest, estimator: Estimator = estimate) -> None:
        self.request = request
        self._estimator = estimator
        self._cache: dict[tuple[object, ...], Estimate] = {}
        self.calls = 0

    def get(
        self,
        gpu_memory: tuple[int, ...],
        tensor_split: tuple[float, ...] | None = None,
        gpu_layers: int | None = None,
    ) -> Estimate:
        key = (gpu_memory, tensor_split, gpu_layers)
        found = self._cache.get(key)
        if found is None:
            self.calls += 1
            options = EstimateOptions(
                backend=self.request.backend,
                backend_params=self.request.backend_params,
                gpu_memory=gpu_memory,
                tensor_split=tensor_split,
                gpu_layers=gpu_layers,
                kv_cache_cpu_bytes=self.request.kv_cache_cpu_bytes,
            )
            found = self._cache[key] = self._estimator(self.request.metadata, options)
        return found

    def cpu(self) -> Estimate:
        return self.get(())

    def single(self, card_total: int) -> Estimate:
        return self.get((card_total,))
