"""The `gpufleet` command line."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Annotated, NoReturn, Optional
from urllib.parse import urlsplit

import typer

from gpufleet.cli.output import (
    console,
    deployments_table,
    err_console,
    instances_table,
    print_json,
    workers_table,
)
from gpufleet.cli.placement_options import (
    CpuOffloadingOpt,
    DistributedOpt,
    GpuOpt,
    GpusPerReplicaOpt,
    OvercommitOpt,
    StrategyOpt,
    WorkerSelectorOpt,
    placement_fields,
)
from gpufleet.cli.source_options import (
    FileOpt,
    HfOpt,
    LocalPathOpt,
    ModelScopeOpt,
    RevisionOpt,
    source_from_options,
)
from gpufleet.cli.wait import WaitFailed, positive_timeout, wait_for_deployment
from gpufleet.client import ApiError, GpufleetClient, ServerUnavailable, server_url
from gpufleet.credentials import CredentialsError
from gpufleet.core.backends.params import BackendParamError, parse_param
from gpufleet.core.schemas import DeploymentEdit, DeploymentSpec
from gpufleet.settings import DEFAULT_PORT, database_url, home

app = typer.Typer(
    name="gpufleet",
    help="Deploy and run models on a GPU cluster, orchestrated by Prefect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ParamOpt = Annotated[
    Optional[list[str]],
    typer.Option("--backend-param", help="backend flag, e.g. --backend-param=--ctx-size=1024 (repeatable)"),
]
SecretEnvOpt = Annotated[Optional[list[str]], typer.Option(
    "--secret-env", help="KEY=VALUE for the backend whose value is secret: never shown by the API, CLI, "
                         "Prefect or logs (repeatable)")]
NoAuthOpt = Annotated[bool, typer.Option("--no-auth", help="authentication off (GPUFLEET_AUTH=off): "
                                         "a single-user laptop only; anyone who reaches the port is admin")]
EnvOpt = Annotated[Optional[list[str]], typer.Option("--env", help="KEY=VALUE for the backend (repeatable)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="wait until the deployment converges")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="seconds to wait (more than 0)",
                                           callback=positive_timeout)]
RestartOnErrorOpt = Annotated[bool, typer.Option(
    "--restart-on-error/--no-restart-on-error",
    help="restart failed instances: at once, then after 10 s, 20 s, 40 s … (at most 5 minutes)")]


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def client() -> GpufleetClient:
    """Retries what was certainly not applied or is safe to repeat (each operation carries a request
    id); a timeout is reported at once, saying that the request may still be applied."""
    return GpufleetClient(retries=3, retry_timeouts=False)


def _parse_env(pairs: list[str] | None, option: str = "--env") -> dict[str, str]:
    env = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"{option} {pair!r} must be KEY=VALUE")
        env[key] = value
    return env


def _params(raw: list[str] | None) -> list[str]:
    """Each parameter's shape is checked here; the server checks them against the engine it
    picks for the model (its managed flags and the flags its --help lists)."""
    params = list(raw or [])
    try:
        for param in params:
            parse_param(param)
    except BackendParamError as exc:
        fail(str(exc), 2)
    return params


def _wait(name: str, timeout: float, gone: bool = False) -> None:
    with client() as c:
        try:
            wait_for_deployment(c, name, timeout, gone=gone)
        except WaitFailed as exc:
            fail(str(exc))


def _show_operation(op) -> None:  # noqa: ANN001
    if op.flow_run_url:
        console.print(f"flow run: {op.flow_run_url}", highlight=False)


# ----------------------------------------------------------------------------- processes


@app.command()
def up(
    port: Annotated[int, typer.Option(help="gpufleet API port")] = DEFAULT_PORT,
    prefect_port: Annotated[int, typer.Option(help="embedded Prefect server port")] = 4200,
    node_name: Annotated[Optional[str], typer.Option(help="name of the local node")] = None,
    virtual_gpus: Annotated[Optional[str], typer.Option(help='declare GPUs, e.g. "A100-80G:4"')] = None,
    demo: Annotated[bool, typer.Option(help="deploy a generated tiny model and chat with it")] = False,
    no_auth: NoAuthOpt = False,
) -> None:
    """Start an embedded cluster (Prefect server, gpufleet server, one node) in the foreground.

    Refuses when a cluster of the same home or ports runs; restarts a part that dies (with
    backoff); exits non-zero only when it gives up on one."""
    from gpufleet.cli.up_run import run_up

    if no_auth:
        os.environ["GPUFLEET_AUTH"] = "off"  # the children inherit it
    code = run_up(port, prefect_port, node_name or _default_node_name(), virtual_gpus,
                  _run_demo if demo else None)
    if code:
        raise typer.Exit(code)


def _process_running(pid: int) -> bool:
    """True while `pid` runs; an exited process its parent has not reaped yet (a
    zombie) has stopped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _default_node_name() -> str:
    raw = socket.gethostname().lower()
    cleaned = "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in raw).strip("-")
    return cleaned[:63] or "local"


def _run_demo() -> None:
    from gpufleet.demo.run import run_demo

    run_demo(console.print)


@app.command()
def down(
    timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait for it to stop",
                                           callback=positive_timeout)] = 120.0,
) -> None:
    """Stop the `gpufleet up` of this GPUFLEET_HOME (found through <home>/up.json)."""
    from gpufleet.cli.up_guard import signal_up

    record = signal_up(home(), signal.SIGTERM)
    if record is None:
        fail(f"no running `gpufleet up` found for GPUFLEET_HOME={home()} (no live process in {home() / 'up.json'})")
    console.print(f"asked gpufleet up (pid {record.pid}, port {record.port}) to stop", highlight=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _process_running(record.pid):
            console.print("stopped")
            return
        time.sleep(0.1)
    fail(f"gpufleet up (pid {record.pid}) is still running after {timeout:g} s")


@app.command()
def server(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = DEFAULT_PORT,
    no_control_worker: Annotated[bool, typer.Option(help="do not serve the control queue here")] = False,
    no_auth: NoAuthOpt = False,
) -> None:
    """Run the gpufleet server (REST API; the only writer of the gpufleet database).
    Authentication is on: the first start creates an admin key (docs/auth.md)."""
    from gpufleet.credentials import auth_enabled
    from gpufleet.server.main import serve

    _setup_logging()
    serve(host, port, database_url(), control_worker=not no_control_worker, auth=auth_enabled() and not no_auth)


@app.command()
def node(
    name: Annotated[Optional[str], typer.Option(help="node name (default: host name)")] = None,
    server: Annotated[Optional[str], typer.Option(help="gpufleet server URL")] = None,
    virtual_gpus: Annotated[Optional[str], typer.Option(help='"A100-80G:4" or a JSON file')] = None,
    label: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE (repeatable)")] = None,
    bind_host: Annotated[str, typer.Option(help="address backends and the node API listen on")] = "127.0.0.1",
    api_port: Annotated[int, typer.Option(help="node API port (0 = any free port)")] = 0,
    stop_backends_on_exit: Annotated[bool, typer.Option(help="stop backends when the agent exits")] = False,
    reserved_ram: Annotated[str, typer.Option(help="RAM placement leaves free on this node, e.g. 2G")] = "0",
    reserved_vram: Annotated[str, typer.Option(help="VRAM placement leaves free on each GPU, e.g. 1G")] = "0",
    runtime: Annotated[Optional[str], typer.Option(
        envvar="GPUFLEET_RUNTIME",
        help="how backends run: docker (a container each) or process; default: docker when a Docker engine "
             "answers here, else process (docs/runtimes.md)")] = None,
    image: Annotated[Optional[list[str]], typer.Option(
        help="ENGINE=REF: this node's image for an engine (private registry, mirror); repeatable")] = None,
    host_runtime_image: Annotated[Optional[str], typer.Option(
        help="docker runtime: run this node's own engine builds in this base image, the host runtime mounted "
             "read-only (air-gapped nodes; `python -m gpufleet.node.runtimes.host_image` builds one)")] = None,
    join_token: Annotated[Optional[str], typer.Option(
        envvar="GPUFLEET_JOIN_TOKEN", help="the server's join token (printed by `gpufleet server`/`up`): "
        "needed once, to receive this node's own credential")] = None,
) -> None:
    """Run a node agent: Prefect worker for this node's queue, inventory, heartbeat, backends."""
    import asyncio

    from gpufleet.node.agent import NodeAgent, NodeConfig
    from gpufleet.node.context import NodeContext
    from gpufleet.node.inventory import VirtualGpuError, node_gpus, parse_size

    _setup_logging()
    node_name = name or _default_node_name()
    try:
        gpus = node_gpus(virtual_gpus)
        ram_reserved = parse_size(reserved_ram, "--reserved-ram")
        vram_reserved = parse_size(reserved_vram, "--reserved-vram")
    except (VirtualGpuError, ValueError) as exc:
        fail(str(exc), 2)
    labels = _parse_env(label)
    from gpufleet.node.runtimes import RuntimeUnavailable, choose_runtime

    try:
        chosen_runtime = choose_runtime(runtime)
    except RuntimeUnavailable as exc:
        fail(str(exc), 2)
    node_images = {}
    for pair in image or []:
        engine_name, sep, ref = pair.partition("=")
        if not sep or not engine_name or not ref:
            fail(f"--image {pair!r} must be ENGINE=REF, e.g. vllm=registry.local/vllm/vllm-openai:v0.32.0", 2)
        node_images[engine_name] = ref
    url = server or server_url()
    ctx = NodeContext(node_name, home() / "nodes" / node_name, bind_host,
                      frozenset(g.index for g in gpus if g.virtual),
                      tuple((g.index, g.memory_total) for g in gpus),
                      runtime=chosen_runtime, cluster=os.environ.get("GPUFLEET_CLUSTER") or urlsplit(url).netloc,
                      images=tuple(node_images.items()), host_runtime_image=host_runtime_image)
    config = NodeConfig(
        name=node_name, server_url=url, context=ctx, gpus=gpus, labels=labels,
        api_port=api_port, stop_backends_on_exit=stop_backends_on_exit,
        ram_reserved=ram_reserved, vram_reserved=vram_reserved, virtual_gpus_spec=virtual_gpus,
        join_token=join_token,
    )
    asyncio.run(NodeAgent(config).run())


# ----------------------------------------------------------------------------- deployments


@app.command()
def deploy(
    name: Annotated[str, typer.Option("--name", help="deployment name")],
    local_path: LocalPathOpt = None,
    hf: HfOpt = None,
    modelscope: ModelScopeOpt = None,
    file: FileOpt = None,
    revision: RevisionOpt = None,
    replicas: Annotated[int, typer.Option(help="number of instances")] = 1,
    backend: Annotated[Optional[str], typer.Option(help="llama.cpp, llama-box, vllm or vox-box (default: chosen from the model)")] = None,
    category: Annotated[Optional[str], typer.Option(help="override the detected category (llm, embedding, reranker, ...)")] = None,
    backend_param: ParamOpt = None,
    env: EnvOpt = None,
    secret_env: SecretEnvOpt = None,
    backend_version: Annotated[Optional[str], typer.Option(
        help="engine version to run (installed on a worker: `gpufleet backends ls`); default: the pinned one")] = None,
    kv_cache_cpu_gib: Annotated[Optional[float], typer.Option(
        help="vLLM extended KV cache (LMCache): GiB of worker RAM for KV chunks, claimed by placement")] = None,
    kv_cache_chunk_size: Annotated[Optional[int], typer.Option(
        help="extended KV cache: tokens per KV chunk (default 256)", metavar="TOKENS")] = None,
    kv_cache_remote_url: Annotated[Optional[str], typer.Option(
        help="extended KV cache: shared store, e.g. redis://host:6379", metavar="URL")] = None,
    placement: StrategyOpt = "spread",
    worker_selector: WorkerSelectorOpt = None,
    gpu: GpuOpt = None,
    gpus_per_replica: GpusPerReplicaOpt = None,
    cpu_offloading: CpuOffloadingOpt = False,
    distributed: DistributedOpt = False,
    overcommit: OvercommitOpt = False,
    image: Annotated[Optional[str], typer.Option(
        help="container image to run (workers with the docker runtime); default: the engine's own")] = None,
    restart_on_error: RestartOnErrorOpt = True,
    lost_worker_grace: Annotated[Optional[float], typer.Option(
        help="seconds before instances on a lost worker are placed elsewhere (default: the cluster's, 300)",
        min=0)] = None,
    wait: WaitOpt = True,
    timeout: TimeoutOpt = 300.0,
) -> None:
    """Deploy a model with a number of replicas."""
    try:
        source = source_from_options(local_path, hf, modelscope, file, revision)
    except ValueError as exc:
        fail(str(exc), 2)
    if replicas < 0:
        fail(f"--replicas must be 0 or more, got {replicas}", 2)
    fields: dict[str, object] = {}
    if backend is not None:
        fields["backend"] = backend
    if category is not None:
        fields["category"] = category
    if image is not None:
        fields["image"] = image
    if not restart_on_error:
        fields["restart_on_error"] = False
    if lost_worker_grace is not None:
        fields["lost_worker_grace_s"] = lost_worker_grace
    if kv_cache_cpu_gib is not None:
        kv: dict[str, object] = {"cpu_gib": kv_cache_cpu_gib}
        if kv_cache_chunk_size is not None:
            kv["chunk_size"] = kv_cache_chunk_size
        if kv_cache_remote_url is not None:
            kv["remote_url"] = kv_cache_remote_url
        fields["kv_cache"] = kv
    elif kv_cache_chunk_size is not None or kv_cache_remote_url is not None:
        fail("--kv-cache-chunk-size and --kv-cache-remote-url extend the KV cache that "
             "--kv-cache-cpu-gib N turns on; give it too", 2)
    try:
        spec = DeploymentSpec(
            name=name,
            replicas=replicas,
            source=source,
            backend_params=_params(backend_param),
            env={**_parse_env(env), **_parse_env(secret_env, "--secret-env")},
            secret_keys=sorted(_parse_env(secret_env, "--secret-env")),
            backend_version=backend_version,
            placement=placement_fields(placement, worker_selector, gpu, gpus_per_replica,
                                       cpu_offloading, distributed, overcommit),
            **fields,  # type: ignore[arg-type]
        )
    except ValueError as exc:
        fail(_validation_message(exc), 2)
    with client() as c:
        op = c.create_deployment(spec)
    console.print(f"deployment {name} created with {replicas} replica(s)")
    if op.detail:
        console.print(op.detail)
    _show_operation(op)
    if wait:
        _wait(name, timeout)
        _print_instances(name)


def _validation_message(exc: ValueError) -> str:
    """Pydantic's errors, one line each, naming the field; other errors as they are."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    lines = []
    for e in errors():
        where = ".".join(str(x) for x in e.get("loc", ()))
        lines.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "invalid deployment: " + "; ".join(lines)


def _print_instances(name: str | None) -> None:
    with client() as c:
        console.print(instances_table(c.list_instances(deployment=name)))


@app.command("ls")
def list_deployments(as_json: JsonOpt = False) -> None:
    """List deployments."""
    with client() as c:
        deps = c.list_deployments()
    if as_json:
        print_json(deps)
    else:
        console.print(deployments_table(deps))


@app.command("ps")
def list_instances(name: Annotated[Optional[str], typer.Argument(help="deployment")] = None, as_json: JsonOpt = False,
                   quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only instance ids, one a line "
                                                       "(for scripts: gpufleet logs $(gpufleet ps NAME -q | head -n 1))")] = False,
                   ) -> None:
    """List model instances (of one deployment, or all)."""
    with client() as c:
        instances = c.list_instances(deployment=name)
    if quiet:
        for i in instances:
            print(i.id)
        return
    if as_json:
        print_json(instances)
    else:
        console.print(instances_table(instances))


@app.command(context_settings={"ignore_unknown_options": True})  # so that `scale x -1` reaches our check
def scale(name: str, replicas: int, wait: WaitOpt = True, timeout: TimeoutOpt = 300.0) -> None:
    """Set the number of replicas."""
    if replicas < 0:
        fail(f"replicas must be 0 or more, got {replicas}", 2)
    with client() as c:
        op = c.scale(name, replicas)
    console.print(f"scaling {name} to {replicas} replica(s)")
    _show_operation(op)
    if wait:
        _wait(name, timeout)
        _print_instances(name)


@app.command()
def stop(name: str, wait: WaitOpt = True, timeout: TimeoutOpt = 120.0) -> None:
    """Stop a deployment: scale to 0, its instances and processes go."""
    scale(name, 0, wait, timeout)


@app.command()
def start(name: str, wait: WaitOpt = True, timeout: TimeoutOpt = 300.0) -> None:
    """Start a deployment with 1 replica."""
    scale(name, 1, wait, timeout)


@app.command("rm")
def remove(name: str, wait: WaitOpt = True, timeout: TimeoutOpt = 120.0) -> None:
    """Delete a deployment, its instances and their processes."""
    with client() as c:
        op = c.delete_deployment(name)
    console.print(f"deleting {name}")
    _show_operation(op)
    if wait:
        _wait(name, timeout, gone=True)
        console.print(f"{name} deleted")


@app.command("rm-instance")
def remove_instance(instance_id: int, wait: WaitOpt = True, timeout: TimeoutOpt = 300.0) -> None:
    """Delete one instance; a new one replaces it while the replica count requires."""
    with client() as c:
        inst = c.get_instance(instance_id)
        op = c.delete_instance(instance_id)
    console.print(f"deleting instance {instance_id} ({inst.name})")
    _show_operation(op)
    if wait:
        deadline = time.monotonic() + timeout
        with client() as c:
            while time.monotonic() < deadline and any(i.id == instance_id for i in c.list_instances(inst.deployment)):
                time.sleep(0.25)
        _wait(inst.deployment, max(1.0, deadline - time.monotonic()))
        _print_instances(inst.deployment)


@app.command()
def restart(instance_id: int) -> None:
    """Restart one instance on its current placement."""
    with client() as c:
        op = c.restart_instance(instance_id)
    console.print(f"restarting instance {instance_id}")
    _show_operation(op)


@app.command()
def edit(
    name: str,
    backend_param: ParamOpt = None,
    env: Annotated[Optional[list[str]], typer.Option(
        "--env", help="KEY=VALUE, merged into the deployment's variables (repeatable; --replace-env: replace them)")] = None,
    secret_env: Annotated[Optional[list[str]], typer.Option(
        "--secret-env", help="KEY=VALUE merged in as a secret (masked everywhere; repeatable)")] = None,
    unset_env: Annotated[Optional[list[str]], typer.Option("--unset-env", help="KEY to remove (repeatable)")] = None,
    replace_env: Annotated[bool, typer.Option(
        "--replace-env", help="the variables become exactly --env and --secret-env (default: merge)")] = False,
    backend_version: Annotated[Optional[str], typer.Option()] = None,
    restart_on_error: Annotated[Optional[bool], typer.Option(
        "--restart-on-error/--no-restart-on-error",
        help="restart failed instances (applies to running instances too)")] = None,
    lost_worker_grace: Annotated[Optional[float], typer.Option(
        help="seconds before instances on a lost worker are placed elsewhere (applies at once)", min=0)] = None,
    rollout: Annotated[bool, typer.Option(
        help="replace running instances with ones of the new configuration, each new one RUNNING before "
             "an old one goes")] = False,
    max_unavailable: Annotated[int, typer.Option(help="with --rollout: instances replaced at a time", min=1)] = 1,
    wait: WaitOpt = True,
    timeout: TimeoutOpt = 1800.0,
) -> None:
    """Change a deployment. Running instances keep their configuration (new ones use this),
    unless --rollout replaces them. Restart on error and the grace are policies: they apply to
    every instance at once."""
    update = DeploymentEdit(
        backend_params=_params(backend_param) if backend_param is not None else None,
        env=_parse_env(env) if env is not None else None,
        secret_env=_parse_env(secret_env, "--secret-env") if secret_env is not None else None,
        unset_env=unset_env or None,
        env_replace=True if replace_env else None,
        backend_version=backend_version,
        restart_on_error=restart_on_error,
        lost_worker_grace_s=lost_worker_grace,
    )
    changes = update.model_dump(exclude_none=True, exclude={"rollout", "max_unavailable"})
    if not changes and not rollout:
        fail("nothing to change: give --backend-param, --env, --secret-env, --unset-env, --backend-version, "
             "--restart-on-error or --no-restart-on-error, --lost-worker-grace, or --rollout (replace "
             "instances of an older edit)", 2)
    if max_unavailable != 1 and not rollout:
        fail("--max-unavailable is for --rollout", 2)
    update = update.model_copy(update={"rollout": rollout, "max_unavailable": max_unavailable})
    with client() as c:
        dep = c.edit_deployment(name, update)
        running = [i for i in c.list_instances(deployment=name) if not i.deleting]
    console.print(f"deployment {name} updated (generation {dep.generation}).")
    if update.env is not None or update.secret_env is not None or update.unset_env or replace_env:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(dep.env.items())) or "none"
        console.print(f"environment {'replaced' if replace_env else 'merged'}; now: {shown}", highlight=False)
    _show_operation(dep)
    if restart_on_error is not None:
        console.print(f"restart on error: {'on' if dep.restart_on_error else 'off'} for all its instances")
    if rollout:
        if wait:
            _wait_rollout(name, timeout)
        return
    if changes.keys() <= {"restart_on_error", "lost_worker_grace_s"}:
        return
    console.print(
        f"{len(running)} existing instance(s) keep running unchanged; instances created from now on "
        "(scale up, rm-instance) use the new configuration; --rollout replaces them.", highlight=False,
    )


def _wait_rollout(name: str, timeout: float) -> None:
    from gpufleet.cli.rollout_wait import RolloutFailed, wait_for_rollout

    with client() as c:
        try:
            wait_for_rollout(c, name, timeout, say=lambda line: console.print(line, highlight=False))
        except (RolloutFailed, TimeoutError) as exc:
            fail(str(exc))
    _print_instances(name)


@app.command()
def logs(
    instance_id: int,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new output")] = False,
    tail: Annotated[Optional[int], typer.Option("--tail", "-n", help="last N lines")] = None,
    previous: Annotated[bool, typer.Option("--previous", "-p", help="the run before the current one (a crash's log)")] = False,
    run_before: Annotated[Optional[int], typer.Option(
        "--run-before", help="the N-th run before the current one (1 = --previous; 3 are kept)", min=1)] = None,
    part: Annotated[Optional[str], typer.Option(
        "--part", help="a part worker of a distributed instance: its llama.cpp rpc-server log(s)")] = None,
    gpu: Annotated[Optional[int], typer.Option("--gpu", help="with --part: that GPU's rpc-server only", min=0)] = None,
) -> None:
    """Print an instance's backend log: the current run's, or with --previous the one before
    (each run has its own log, starting with gpufleet's lines: worker, GPUs, command)."""
    if tail is not None and tail < 0:
        fail("--tail must be 0 or more", 2)
    back = run_before or (1 if previous else 0)
    if back and follow:
        fail("--follow follows the current run; a previous run's log is complete", 2)
    with client() as c:
        if gpu is not None and part is None:
            fail("--gpu picks one rpc-server of a part worker: give --part WORKER too", 2)
        for chunk in c.stream_logs(instance_id, tail, follow, previous=back, part=part, gpu=gpu):
            sys.stdout.write(chunk)
            sys.stdout.flush()


workers_app = typer.Typer(help="List node workers; `workers rm NAME` decommissions one.")
app.add_typer(workers_app, name="workers")


@workers_app.callback(invoke_without_command=True)
def workers(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List node workers."""
    if ctx.invoked_subcommand is not None:
        return
    with client() as c:
        ws = c.list_workers()
    if as_json:
        print_json(ws)
    else:
        console.print(workers_table(ws))


@workers_app.command("rm")
def remove_worker(
    name: str,
    force: Annotated[bool, typer.Option("--force", help="remove it even while its node still sends heartbeats")] = False,
) -> None:
    """Decommission a worker that is gone: its record goes, its instances are placed on other
    workers (those with GPUs chosen by hand stay UNREACHABLE). Refused while it is alive."""
    with client() as c:
        instances = c.remove_worker(name, force)
    console.print(f"worker {name} removed")
    if instances:
        console.print(f"its instances {', '.join(map(str, instances))} are placed on other workers where they fit "
                      "(`gpufleet ps` shows them)", highlight=False)


def _register_commands() -> None:
    """Commands that live in their own modules (model sources, estimation, placement, gateway,
    API keys, schedules)."""
    from gpufleet.cli import (
        backends_cmd, estimate_cmd, gateway_cmd, keys_cmd, plan_cmd, schedule_cmd, sources_cmd,
    )

    for module in (sources_cmd, estimate_cmd, plan_cmd, backends_cmd, gateway_cmd, keys_cmd, schedule_cmd):
        module.register(app)


_register_commands()


def main() -> None:
    try:
        app()
    except ApiError as exc:
        err_console.print(f"[red]error:[/red] {exc.detail}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except (ServerUnavailable, CredentialsError) as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
