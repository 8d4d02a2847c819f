"""Checks a deployment spec before anything is recorded: backend parameters, the
model's metadata (headers only), the backend that will serve it, and its
estimate. Bad input raises :class:`InvalidSpec` (a 400 at the API), so nothing
is half-written.

A local path the server cannot see is not bad input: the workers may hold it
(air-gapped sites copy models onto the GPU machines only). Such a deployment is
recorded with an *unknown* estimate, and a worker that lacks the path puts its
instance in ERROR naming worker and path.

Engines are checked against what the workers reported (`WorkerView.engines`):
a deployment whose engine no registered worker has, or whose `--backend-version`
no ready worker has installed, would only sit PENDING or crash on a node, so it
is refused here with what each worker has and the install command. A cluster
with no workers at all is not checked: nodes may join later, and the instance
waits PENDING ("no workers registered") as before.
"""

from __future__ import annotations

from pydantic import ValidationError

from gpufleet.core.backends import llama_cpp, vllm, vox_box
from gpufleet.core.backends.choose import NoBackend, choose_backend
from gpufleet.core.backends.flags import check_known_flags
from gpufleet.core.backends.params import BackendParam
from gpufleet.core.backends.registry import LLAMA_ENGINES
from gpufleet.core.backends.registry import engine as engine_info
from gpufleet.core.estimation.summary import check_params, summarize
from gpufleet.core.metadata import ModelMetadata
from gpufleet.core.schemas import DeploymentSpec, ResourceEstimate, WorkerView
from gpufleet.core.validation_rules import tensor_parallel_problems
from gpufleet.sources import ModelNotVisible, ModelSourceError, read_metadata


class InvalidSpec(ValueError):
    """The spec cannot be deployed as given; the message says why and how to fix it."""


def engine_params(backend: str, raw: list[str], *, kv_cache: bool = False) -> list[BackendParam]:
    """Parse and check parameters with the engine's own rules (its managed flags are refused)."""
    try:
        if backend in LLAMA_ENGINES:
            params = llama_cpp.validate_params(raw)
        elif backend == "vllm":
            params = vllm.validate_params(raw, kv_cache=kv_cache)
        else:
            params = vox_box.validate_params(raw)
        check_params(backend, raw)
    except ValueError as exc:  # BackendParamError is a ValueError too
        raise InvalidSpec(str(exc)) from exc
    return params


def check_flags_known(backend: str, version: str | None, params: list[BackendParam],
                      workers: list[WorkerView]) -> None:
    """Refuse a flag none of the workers' installs of this engine (version) lists in its --help."""
    installs = [e for w in workers for e in w.engines if e.engine == backend and e.flags
                and (version is None or e.version == version)]
    if not installs:
        return
    known = {f for e in installs for f in e.flags}
    try:
        check_known_flags(params, known, backend, version or installs[0].version)
    except ValueError as exc:
        raise InvalidSpec(str(exc)) from exc


def _choose(spec: DeploymentSpec, metadata: ModelMetadata | None) -> str:
    """The user's backend, else the one for the model's format and category. A local path the
    server cannot see is judged by its name: a `.gguf` file is llama.cpp's, a directory a
    safetensors checkpoint (vLLM)."""
    requested = spec.backend if "backend" in spec.model_fields_set else None
    if metadata is None:
        if requested:
            return requested
        path = (spec.source.local_path or spec.source.file or "").lower()
        return "llama.cpp" if path.endswith(".gguf") or spec.source.kind != "local_path" else "vllm"
    try:
        return choose_backend(metadata.format, spec.category or metadata.category, requested)
    except NoBackend as exc:
        raise InvalidSpec(f"{spec.source.describe()}: {exc}") from exc


def _with_backend(spec: DeploymentSpec, backend: str) -> DeploymentSpec:
    """The spec with its backend decided, validated again: the backend's capabilities
    (offloading, distributed, extended KV cache) are checked for the chosen one."""
    try:
        return DeploymentSpec.model_validate({**spec.model_dump(), "backend": backend})
    except ValidationError as exc:
        raise InvalidSpec("; ".join(str(e.get("msg", "")).removeprefix("Value error, ")
                                    for e in exc.errors())) from exc


def installable_version_problem(engine_name: str, version: str) -> str | None:
    """Why ``version`` of ``engine_name`` cannot be installed by `gpufleet backends install`
    (None when it can be tried): pip engines take PEP 440 versions; llama.cpp is built by
    scripts/build-llama-cpp.sh, which builds one pinned, checksum-verified release."""
    info = engine_info(engine_name)
    if info.installer == "pip":
        from packaging.version import InvalidVersion, Version

        try:
            Version(version)
        except InvalidVersion:
            return f"{version!r} is not a {engine_name} release version (e.g. {info.default_version})"
        return None
    if engine_name != "llama.cpp":
        return f"{engine_name} is not installed by gpufleet; deploy GGUF models with --backend llama.cpp"
    if version != info.default_version:
        return (f"scripts/build-llama-cpp.sh builds llama.cpp {info.default_version} only (pinned and "
                f"checksum-verified); for another build, set GPUFLEET_LLAMA_SERVER on the node to its llama-server")
    return None


def _install_hint(engine_name: str, version: str) -> str:
    return f"`gpufleet backends install {engine_name} {version} --node N`"


def check_engine_on_workers(engine_name: str, version: str | None, workers: list[WorkerView]) -> None:
    """Refuse an engine no registered worker reports, and a version no ready worker has
    installed (any device kind: placement then picks among the workers that have it)."""
    if not workers:
        return
    having = {w.name: [e for e in w.engines if e.engine == engine_name] for w in workers}
    if not any(having.values()):
        reported = sorted({e.engine for w in workers for e in w.engines})
        default = engine_info(engine_name).default_version
        if installable_version_problem(engine_name, default) is None:
            fix = f"install it with {_install_hint(engine_name, default)}"
        else:
            fix = installable_version_problem(engine_name, default) or ""
        raise InvalidSpec(f"no worker can run {engine_name}: {fix} "
                          f"(workers report: {', '.join(reported) or 'no engines'})")
    if version is None:
        return
    ready = [w for w in workers if w.ready]
    if any(e.version == version for w in ready for e in having[w.name]):
        return
    available = "; ".join(
        f"{w.name}{'' if w.ready else ' (not ready)'}: "
        + (", ".join(f"{e.version} ({', '.join(e.devices) or 'no devices'})" for e in having[w.name]) or "none")
        for w in workers)
    problem = installable_version_problem(engine_name, version)
    if problem is not None:
        raise InvalidSpec(f"unknown {engine_name} version {version}: {problem}. Installed per worker: {available}")
    raise InvalidSpec(f"{engine_name} {version} is not installed on any ready worker (installed per worker: "
                      f"{available}); install it with {_install_hint(engine_name, version)}")


def validate_spec(spec: DeploymentSpec, workers: list[WorkerView] | None = None,
                  ) -> tuple[DeploymentSpec, ModelMetadata | None, ResourceEstimate]:
    """The spec with its backend decided, the metadata (None when the server cannot see
    a local path) and the estimate to record with the deployment. With ``workers`` (the
    deploy routes), the engine, its version and its flags are checked against what they
    reported; a dry run (`plan`) passes none."""
    try:
        metadata: ModelMetadata | None = read_metadata(spec.source, spec.category)
        unseen = None
    except ModelNotVisible as exc:
        metadata, unseen = None, exc
    except ModelSourceError as exc:
        raise InvalidSpec(f"{exc} (checked on the gpufleet server)") from exc
    spec = _with_backend(spec, _choose(spec, metadata))
    params = engine_params(spec.backend, spec.backend_params, kv_cache=spec.kv_cache is not None)
    problems = tensor_parallel_problems(spec.config(), metadata)
    if problems:
        raise InvalidSpec("; ".join(problems))
    if workers is not None:
        check_engine_on_workers(spec.backend, spec.backend_version, workers)
        check_flags_known(spec.backend, spec.backend_version, params, workers)
    if metadata is None:
        return spec, None, ResourceEstimate.unknown(f"{unseen} on the gpufleet server; the workers may have it")
    return spec, metadata, summarize(metadata, spec.backend, spec.backend_params)
