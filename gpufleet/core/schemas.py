"""Pydantic models at gpufleet's boundaries: what users send, what the API returns,
what flows pass to each other. Pure: no I/O here."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gpufleet.core.backends.registry import engine, with_capability
from gpufleet.core.estimation.summary import ResourceEstimate
from gpufleet.core.metadata import Category, ModelMetadata
from gpufleet.core.placement_spec import Placement, PlacementSpec
from gpufleet.core.selectors import check_label
from gpufleet.core.states import DeploymentState, InstanceState

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_NAME_RE = re.compile(NAME_PATTERN)

BackendName = Literal["llama.cpp", "llama-box", "vllm", "vox-box"]
SourceKind = Literal["local_path", "huggingface", "modelscope"]
RuntimeName = Literal["process", "docker"]


class Strict(BaseModel):
    """Reject unknown fields: a typo in a request must be an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ModelSource(Strict):
    """Where a model comes from. Exactly one of `local_path` or `repo` is set."""

    kind: SourceKind = "local_path"
    local_path: str | None = Field(
        default=None, description="GGUF file (or model directory) as seen by the workers"
    )
    repo: str | None = Field(default=None, description="hub repository id, e.g. org/name")
    file: str | None = Field(default=None, description="file or glob inside the repository")
    revision: str | None = Field(default=None, description="hub branch, tag or commit (default: main/master)")

    @model_validator(mode="after")
    def _one_location(self) -> ModelSource:
        if self.kind == "local_path":
            if not self.local_path:
                raise ValueError("a local_path source needs `local_path`")
            if self.repo:
                raise ValueError("a local_path source takes no `repo`")
        elif not self.repo:
            raise ValueError(f"a {self.kind} source needs `repo`")
        return self

    def describe(self) -> str:
        if self.kind == "local_path":
            return str(self.local_path)
        prefix = {"huggingface": "hf", "modelscope": "modelscope"}[self.kind]
        return f"{prefix}:{self.repo}" + (f"/{self.file}" if self.file else "")


class KvCacheSpec(Strict):
    """vLLM's extended KV cache (LMCache): KV blocks evicted from GPU memory are kept
    in ``cpu_gib`` GiB of the worker's RAM (claimed by placement) and, optionally,
    in a shared remote store, so a repeated prefix is loaded instead of recomputed."""

    cpu_gib: float = Field(gt=0, le=4096, description="GiB of host RAM for KV chunks (LMCache max_local_cpu_size)")
    chunk_size: int = Field(default=256, ge=16, le=65536, description="tokens per KV chunk (LMCache chunk_size)")
    remote_url: str | None = Field(default=None, description="shared store, e.g. redis://host:6379 (LMCache remote_url)")

    @field_validator("remote_url")
    @classmethod
    def _valid_remote(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.match(r"^(redis|rediss|lm|infinistore|mooncakestore)://[^/\s:]+(:\d{1,5})?/?$", v):
            raise ValueError(
                f"--kv-cache-remote-url {v!r} is not a store URL; use redis://HOST:PORT "
                "(or lm://, infinistore://, mooncakestore://)")
        return v


class DeploymentConfig(Strict):
    """The part of a deployment an instance is launched with; copied into each
    instance when it is created, so that `edit` only affects new instances."""

    source: ModelSource
    backend: BackendName = "llama.cpp"
    category: Category | None = Field(default=None, description="override the detected category")
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    backend_version: str | None = None
    backend_params: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    secret_keys: list[str] = Field(default_factory=list, description="names in env whose values are secret: "
                                   "never shown in clear by the API, CLI, Prefect run parameters or logs")
    kv_cache: KvCacheSpec | None = Field(default=None, description="extended KV cache (vLLM with LMCache)")
    image: str | None = Field(default=None, description="container image to run instead of the engine's default "
                                                        "(nodes with the docker runtime)")
    restart_on_error: bool = Field(default=True, description="restart an instance whose backend failed, with a "
                                   "back-off (at once, then 10 s, 20 s … capped at 300 s)")
    lost_worker_grace_s: float | None = Field(
        default=None, ge=0, le=7 * 24 * 3600,
        description="seconds an instance waits on a worker that stopped its heartbeats before it is placed on "
                    "another one; default: the cluster's (GPUFLEET_LOST_WORKER_GRACE, 300 s)")

    @model_validator(mode="after")
    def _secrets_in_env(self) -> DeploymentConfig:
        missing = sorted(set(self.secret_keys) - set(self.env))
        if missing:
            raise ValueError(f"secret_keys {missing} name no variable in env")
        return self

    @model_validator(mode="after")
    def _placement_fits_backend(self) -> DeploymentConfig:
        if "backend" not in self.model_fields_set:
            return self  # chosen from the model on the server, which validates again with it
        caps = engine(self.backend)
        if self.placement.cpu_offloading and not caps.cpu_offloading:
            raise ValueError(
                f"--cpu-offloading is for {' and '.join(with_capability('cpu_offloading'))}; "
                f"{self.backend} runs on GPUs only"
            )
        if self.placement.distributed and not caps.distributed:
            raise ValueError(
                f"--distributed is supported for {' and '.join(with_capability('distributed'))} "
                f"(llama.cpp RPC servers), not {self.backend}"
            )
        if self.kv_cache is not None and not caps.kv_cache_extension:
            raise ValueError(
                f"the extended KV cache (--kv-cache-cpu-gib) is for {', '.join(with_capability('kv_cache_extension'))} "
                f"on CUDA or ROCm workers, not {self.backend}; see docs/engines.md for the compatibility matrix"
            )
        return self


class DeploymentSpec(DeploymentConfig):
    """What a user asks for when deploying a model."""

    name: str = Field(description="lowercase letters, digits and '-', at most 63 characters")
    replicas: int = Field(default=1, ge=0, le=1000)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(
                f"invalid deployment name {v!r}: use lowercase letters, digits and '-', "
                "starting and ending with a letter or digit, at most 63 characters"
            )
        return v

    def config(self) -> DeploymentConfig:
        return DeploymentConfig(**self.model_dump(include=set(DeploymentConfig.model_fields)))


class DeploymentEdit(Strict):
    """Fields `gpufleet edit` may change. Unset fields stay as they are.

    ``env`` and ``secret_env`` are merged into the current variables (a name given again takes
    the new value; a secret given as plain ``env`` stops being secret), ``unset_env`` removes
    names; ``env_replace`` replaces all of them with ``env`` + ``secret_env`` instead."""

    backend_version: str | None = None
    backend_params: list[str] | None = None
    env: dict[str, str] | None = None
    secret_env: dict[str, str] | None = None
    unset_env: list[str] | None = None
    env_replace: bool | None = None
    restart_on_error: bool | None = Field(default=None, description="applies to running instances too")
    lost_worker_grace_s: float | None = Field(default=None, ge=0, le=7 * 24 * 3600,
                                              description="applies to running instances too")
    rollout: bool = Field(default=False, description="replace running instances with ones of the new configuration, "
                          "each new one RUNNING before an old one goes; without it they keep theirs")
    max_unavailable: int = Field(default=1, ge=1, le=1000, description="with rollout: instances replaced at a time")


class ScaleRequest(Strict):
    replicas: int = Field(ge=0, le=1000)


class GpuInfo(Strict):
    """One GPU of a worker; `virtual` GPUs are declared, not detected."""

    index: int = Field(ge=0)
    name: str
    memory_total: int = Field(ge=0, description="bytes")
    vendor: str = "nvidia"
    virtual: bool = False
    memory_used_outside: int = Field(
        default=0, ge=0, description="bytes held by processes gpufleet did not start (NVML, when the node "
        "last reported; declared for virtual GPUs): placement never counts them as free")


#: A node with llama.cpp's rpc-server and an RPC-enabled llama-server: it can take
#: part in, or be the main worker of, a distributed (--distributed) instance.
RPC_CAPABILITY = "llama.cpp-rpc"


class RpcServerInfo(Strict):
    """One llama.cpp RPC server a part worker runs for a distributed instance
    (one per GPU); the main worker's llama-server connects to ``host:port``."""

    worker: str
    gpu_index: int = Field(ge=0)
    host: str
    port: int = Field(ge=1, le=65535)
    pid: int | None = None


class EngineInstall(Strict):
    """One engine version a node can run, as the node found it."""

    engine: str
    version: str
    devices: list[str] = Field(default_factory=list, description="device kinds it can use: cuda, rocm, cpu")
    location: str = Field(default="", description="where it lives on the node (environment, binary, image)")
    default: bool = Field(default=False, description="what the node runs when no --backend-version is given")
    flags: list[str] = Field(default_factory=list, description="flags its --help lists; empty: not checked")


DeviceKind = Literal["cpu", "cuda", "rocm"]


class BackendInstallRequest(Strict):
    """`gpufleet backends install ENGINE VERSION`: what to install on one worker.
    ``device`` None: CUDA if the worker has real NVIDIA GPUs, else CPU."""

    engine: str
    version: str = Field(min_length=1, max_length=64)
    device: DeviceKind | None = None


class RunProgress(BaseModel):
    """A flow run as the CLI follows it through the gpufleet server (which reaches Prefect
    when the CLI may not): its state and its log lines from ``offset`` on."""

    flow_run_id: str
    state: str
    final: bool
    completed: bool
    message: str = ""
    logs: list[str] = Field(default_factory=list)
    next_offset: int = 0


class WorkerRegistration(Strict):
    name: str
    address: str = Field(description="base URL of the node agent (logs)")
    labels: dict[str, str] = Field(default_factory=dict)
    gpus: list[GpuInfo] = Field(default_factory=list)
    cpu_count: int = Field(ge=1)
    memory_total: int = Field(ge=0, description="bytes of RAM")
    work_queue: str
    ram_reserved: int = Field(default=0, ge=0, description="bytes of RAM placement leaves free (OS, node agent)")
    vram_reserved: int = Field(default=0, ge=0, description="bytes placement leaves free on each GPU")
    capabilities: list[str] = Field(default_factory=list,
                                    description=f"what the node can run beyond one llama.cpp process, "
                                                f"e.g. {RPC_CAPABILITY!r} (distributed instances)")
    engines: list[EngineInstall] = Field(default_factory=list, description="engine versions the node can run")
    runtime: RuntimeName = Field(default="process", description="how the node runs backends: processes or containers")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"invalid worker name {v!r}: use lowercase letters, digits and '-'")
        return v


class WorkerView(WorkerRegistration):
    """``labels``: the node's labels with the operator's over them (what selectors match)."""

    ready: bool
    last_heartbeat: datetime | None
    operator_labels: dict[str, str] = Field(default_factory=dict,
                                            description="labels set through the API (PATCH /v1/workers/NAME)")


class WorkerEdit(Strict):
    """Labels an operator sets on a worker, replacing the ones set before; the node's own
    labels stay, and these win over them."""

    labels: dict[str, str]

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            check_label(key, value)
        return labels


class InstanceView(BaseModel):
    """An instance as the API returns it."""

    id: int
    name: str
    deployment: str
    state: InstanceState
    state_message: str = ""
    worker: str | None = None
    gpu_indexes: list[int] = Field(default_factory=list)
    port: int | None = None
    pid: int | None = None
    restart_count: int = 0
    next_restart_at: datetime | None = Field(default=None, description="when it is restarted next (ERROR only)")
    crash_looping: bool = Field(default=False, description="restarted several times without a stable run between")
    running_since: datetime | None = None
    deleting: bool = False
    config: DeploymentConfig
    generation: int = Field(default=0, description="the deployment's generation this instance was created with")
    outdated: bool = Field(default=False, description="launched with another configuration than the deployment's "
                                                      "(an edit since); `edit --rollout` replaces it")
    placement: Placement | None = None
    rpc_servers: list[RpcServerInfo] = Field(default_factory=list,
                                             description="RPC servers of a distributed instance, as reported")
    created_at: datetime
    updated_at: datetime


class DeploymentView(DeploymentSpec):
    """A deployment as the API returns it."""

    id: int
    ready_replicas: int
    state: DeploymentState
    generation: int
    rolling_out: bool = Field(default=False, description="an `edit --rollout` is replacing instances")
    rollout_status: str = Field(default="", description="how the last rollout goes or went, in words")
    metadata: ModelMetadata | None = None
    estimate: ResourceEstimate | None = None
    created_at: datetime
    updated_at: datetime


class InstanceStateUpdate(Strict):
    """A state report from a flow or a node agent."""

    state: InstanceState
    message: str = ""
    port: int | None = None
    pid: int | None = None
    restart_count: int | None = None
    worker: str | None = Field(default=None, description="the reporting node: refused (409) if the instance is no "
                               "longer placed there (rescheduled away while the node was lost)")


class Heartbeat(Strict):
    """A node's heartbeat: it is alive, and (optionally) what other programs hold per GPU."""

    gpus_used_outside: dict[int, Annotated[int, Field(ge=0)]] | None = Field(
        default=None, description="GPU index -> bytes held by processes gpufleet did not start")


class ReconcileRequest(Strict):
    """Ask the server to apply a deployment's plan. ``stopped``: instances marked for removal
    whose backends the reconcile flow stopped (their records go, releasing claims)."""

    stopped: list[int] = Field(default_factory=list)
    retry_unplaced: bool = True


class StateReports(Strict):
    """Several instances' state reports in one request (a node run reports a phase at once)."""

    reports: dict[int, InstanceStateUpdate]


class StateReportsResult(BaseModel):
    applied: list[int] = Field(default_factory=list)
    missing: list[int] = Field(default_factory=list, description="deleted meanwhile")
    refused: dict[int, str] = Field(default_factory=dict, description="instance id -> why (a transition not allowed)")


class NodeAction(BaseModel):
    """A step of the reconcile plan that runs on a node (see :mod:`gpufleet.core.plan`)."""

    kind: Literal["stop", "serve-rpc", "serve", "restart"]
    instance: int
    worker: str
    reason: str


class AppliedPlan(BaseModel):
    """The server's answer to "reconcile this deployment": what it changed in its database
    under the placement ledger, and the node actions left for the reconcile flow, with the
    instances they name and their workers' addresses (so the flow reads nothing else)."""

    deployment: str
    exists: bool = Field(description="False once the plan forgot the deployment (deleted)")
    created: list[int] = Field(default_factory=list)
    placed: dict[int, str] = Field(default_factory=dict, description="instance id -> worker")
    unplaced: dict[int, str] = Field(default_factory=dict, description="instance id -> reason")
    forgotten: list[int] = Field(default_factory=list)
    unreachable: list[int] = Field(default_factory=list)
    released: list[int] = Field(default_factory=list, description="placements on lost workers given up")
    node_actions: list[NodeAction] = Field(default_factory=list)
    instances: list[InstanceView] = Field(default_factory=list)
    worker_addresses: dict[str, str] = Field(default_factory=dict)
    metadata: ModelMetadata | None = None


class OperationAccepted(BaseModel):
    """Answer to an operation that runs as a Prefect flow."""

    operation: str
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    detail: str = ""


class DeploymentEdited(DeploymentView):
    """Answer to an edit: the deployment as recorded, and the `edit` flow run it started."""

    flow_run_id: str | None = None
    flow_run_url: str | None = None


__all__ = [name for name in dir() if not name.startswith("_")]  # re-exports: ModelMetadata, Placement, ResourceEstimate, ...
