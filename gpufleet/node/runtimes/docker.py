"""The Docker runtime: one container per backend (an instance's server, or one
llama.cpp RPC server of a distributed instance), through the Docker engine's API.

What a container gets, from the same launch description a process gets
(:func:`plan_container` computes it without touching the engine, so it is tested
as such):

- its image (:mod:`.images`): the engine's image for its version and device, or the
  node's own program in the host-runtime base image with the host runtime mounted
  read-only;
- exactly its GPUs: one NVIDIA device request naming the placed GPU indexes, and
  ``CUDA_VISIBLE_DEVICES`` renumbered to what the container sees; none for CPU and
  declared (virtual) GPUs — never all GPUs;
- the model's directory read-only at ``/models/<name>``, the model path in its argv
  and environment rewritten to it;
- its port published on the node's bind address, the server told to listen on all
  of the container's interfaces; host networking where the backend talks to other
  backends on the node's address (an RPC server, a llama-server with ``--rpc``);
- a memory limit when the node computed one, and the description's ``shm_size``;
- labels naming cluster, node, deployment, instance, incarnation, role and registry
  key (``docker ps --filter label=gpufleet.cluster=…``), plus the record itself, so
  that a restarted agent can adopt a container its registry lost.

Its output is streamed by a thread of the agent from the engine's log into the
instance's log file (``gpufleet logs`` reads both runtimes the same way); the
position is kept beside the log, so a restarted agent resumes where it stopped.
Exit code and OOM flag come from the engine's inspect. A start that fails removes
the container, whatever step failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpufleet.core.backends.launch import LaunchDescription
from gpufleet.node import processes
from gpufleet.node.runtimes import ExitStatus, RuntimeName, Started, StartFailed, StartRequest, images

if TYPE_CHECKING:
    from gpufleet.node.context import NodeContext
    from gpufleet.node.registry import BackendRecord, BackendRegistry

log = logging.getLogger("gpufleet.node.docker")

MODELS_DIR = "/models"
LABEL = "gpufleet"
PING_TIMEOUT_S = 3.0
API_TIMEOUT_S = 120
HOST_FLAGS = ("--host", "-H", "--hostname")
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: files of the host's /etc the host runtime needs besides what Docker writes (hosts, resolv.conf)
HOST_ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime")


def docker_unreachable_reason() -> str | None:
    """None when a Docker engine answers on DOCKER_HOST (default: the local socket)."""
    try:
        import docker

        client = docker.from_env(timeout=int(PING_TIMEOUT_S))
        try:
            client.ping()
        finally:
            client.close()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means: not usable here
        return str(exc) or type(exc).__name__


def labels_for(*, cluster: str, node: str, deployment: str, instance_id: int, instance_name: str,
               incarnation: int, role: str, key: str) -> dict[str, str]:
    return {
        f"{LABEL}.cluster": cluster, f"{LABEL}.node": node, f"{LABEL}.deployment": deployment,
        f"{LABEL}.instance": str(instance_id), f"{LABEL}.instance-name": instance_name,
        f"{LABEL}.incarnation": str(incarnation), f"{LABEL}.role": role, f"{LABEL}.key": key,
    }


def container_name(cluster: str, node: str, key: str, instance_name: str) -> str:
    """Readable in `docker ps`, unique per Docker engine across clusters and nodes."""
    tag = hashlib.sha256(cluster.encode()).hexdigest()[:6]
    raw = f"gpufleet-{tag}-{node}-{instance_name}-{key.replace('.', '-')}"
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", raw)[:200]


@dataclass
class ContainerPlan:
    """Everything the engine is asked for; pure data, built without the engine."""

    name: str
    image: images.ImageChoice
    argv: list[str]
    env: dict[str, str]
    mounts: list[tuple[str, str, bool]]  # (host path, container path, read-only)
    labels: dict[str, str]
    host_network: bool
    ports: dict[str, tuple[str, int]] = field(default_factory=dict)
    gpu_ids: list[str] = field(default_factory=list)
    mem_limit: int | None = None
    shm_size: int | None = None

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of docker-py's ``containers.create``."""
        from docker.types import DeviceRequest, Mount

        kwargs: dict[str, Any] = dict(
            image=self.image.ref, entrypoint=self.argv[:1], command=self.argv[1:], name=self.name,
            environment=self.env, labels=self.labels, detach=True, stdin_open=False, tty=False,
            mounts=[Mount(target=dst, source=src, type="bind", read_only=ro) for src, dst, ro in self.mounts],
            log_config={"type": "json-file", "config": {"max-size": "50m", "max-file": "2"}},
        )
        if self.host_network:
            kwargs["network_mode"] = "host"
        else:
            kwargs["ports"] = self.ports
        if self.gpu_ids:
            kwargs["device_requests"] = [DeviceRequest(driver="nvidia", device_ids=self.gpu_ids,
                                                       capabilities=[["gpu"]])]
        if self.mem_limit:
            kwargs["mem_limit"] = self.mem_limit
            kwargs["memswap_limit"] = self.mem_limit  # no swap on top: the limit is the limit
        if self.shm_size:
            kwargs["shm_size"] = self.shm_size
        return kwargs


def needs_host_network(desc: LaunchDescription) -> bool:
    """An RPC server, and a llama-server that talks to RPC servers, reach each other on
    the node's address, which a bridged container cannot see when it is loopback."""
    return desc.program.name == "rpc-server" or "--rpc" in desc.args


def plan_container(request: StartRequest, node: NodeContext, cluster_name: str) -> ContainerPlan:
    desc = request.desc
    device = node.device_kind(list(desc.gpu_indexes))
    choice = images.choose_image(desc, device, deployment_image=request.image, node_images=dict(node.images),
                                 host_runtime_image=node.host_runtime_image)
    argv = list(request.command) if choice.mode == "host-runtime" else images.in_image_command(desc)
    env = dict(request.env)
    mounts: list[tuple[str, str, bool]] = []
    if desc.model_path:
        src, inside = model_mount(Path(desc.model_path))
        mounts.append((str(src), inside, True))
        argv = [_rewrite(a, desc.model_path, model_inside(Path(desc.model_path), src, inside)) for a in argv]
        env = {k: _rewrite(v, desc.model_path, model_inside(Path(desc.model_path), src, inside)) for k, v in env.items()}
    for state_dir in state_dirs([*argv, *env.values()], node.home):
        mounts.append((str(state_dir), str(state_dir), False))
    if choice.mode == "host-runtime":
        mounts += [(p, p, True) for p in host_runtime_paths(argv)]
        env.setdefault("PATH", PATH_ENV)
    host_network = needs_host_network(desc)
    ports: dict[str, tuple[str, int]] = {}
    if not host_network:
        argv = listen_everywhere(argv, node.bind_host)
        ports = {f"{request.port}/tcp": (node.bind_host, request.port)}
    real = [i for i in desc.gpu_indexes if i not in node.virtual_gpus]
    if real:
        env["CUDA_VISIBLE_DEVICES"] = renumber_visible(env.get("CUDA_VISIBLE_DEVICES", ""), real)
    name = container_name(cluster_name, node.name, request.key, request.labels.get(f"{LABEL}.instance-name", ""))
    return ContainerPlan(name=name, image=choice, argv=argv, env=env, mounts=mounts, labels=dict(request.labels),
                         host_network=host_network, ports=ports, gpu_ids=[str(i) for i in sorted(real)],
                         mem_limit=request.memory_limit, shm_size=desc.shm_size)


def model_mount(model: Path) -> tuple[Path, str]:
    """A model file's directory (GGUF shards and side files sit beside it) or a checkpoint
    directory, and where it appears inside: ``/models/<its name>``."""
    src = model if model.is_dir() else model.parent
    name = re.sub(r"[^a-zA-Z0-9_.-]", "_", src.name) or "model"
    return src, f"{MODELS_DIR}/{name}"


def model_inside(model: Path, src: Path, inside: str) -> str:
    return inside if model == src else f"{inside}/{model.relative_to(src)}"


def _rewrite(value: str, old: str, new: str) -> str:
    """``old`` as a whole argument or as the value of ``--flag=old``."""
    if value == old:
        return new
    if value.endswith(f"={old}"):
        return value[: -len(old)] + new
    return value


def listen_everywhere(argv: list[str], bind_host: str) -> list[str]:
    """Inside a bridged container the node's address does not exist: the server listens on
    all of the container's interfaces, and the published port is bound to the node's address."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in HOST_FLAGS and i + 1 < len(out) and out[i + 1] == bind_host:
            out[i + 1] = "0.0.0.0"
        for flag in HOST_FLAGS:
            if arg == f"{flag}={bind_host}":
                out[i] = f"{flag}=0.0.0.0"
    return out


def renumber_visible(visible: str, real: list[int]) -> str:
    """A container sees its requested GPUs as 0..n-1 in the host's order: the host indexes
    the process would be given become their ranks, keeping the description's order
    (which ``--tensor-split`` follows)."""
    ranks = {host: rank for rank, host in enumerate(sorted(real))}
    wanted = [int(x) for x in visible.split(",") if x.strip().isdigit()] or list(real)
    return ",".join(str(ranks[i]) for i in wanted if i in ranks)


def state_dirs(values: list[str], home: Path) -> list[Path]:
    """Directories under the node home that the description names (the RPC tensor cache, the
    vox-box data directory): writable at the same path, created if missing."""
    found: list[Path] = []
    home = home.resolve()
    for value in values:
        candidate = value.split("=", 1)[1] if value.startswith("-") and "=" in value else value
        if not candidate.startswith("/"):
            continue
        path = Path(candidate)
        try:
            path.resolve().relative_to(home)
        except ValueError:
            continue
        target = path.parent if path.is_file() else path
        target.mkdir(parents=True, exist_ok=True)
        if target not in found:
            found.append(target)
    return found


def host_runtime_paths(argv: list[str]) -> list[str]:
    """What the node's own program needs from the host, read-only at the same paths:
    /usr (libc, the system Python's libraries), the Python installation and virtual
    environment gpufleet runs in, gpufleet's source, and the program's own directory."""
    import gpufleet

    candidates = ["/usr", os.path.realpath(sys.base_prefix), sys.prefix,
                  str(Path(gpufleet.__file__).resolve().parent.parent)]
    if argv and argv[0].startswith("/"):
        candidates += [str(Path(argv[0]).parent), str(Path(os.path.realpath(argv[0])).parent)]
    candidates += [f for f in HOST_ETC_FILES if os.path.exists(f)]
    chosen: list[str] = []
    for path in sorted({os.path.normpath(p) for p in candidates if os.path.exists(p)}, key=len):
        if not any(path == c or path.startswith(c.rstrip("/") + "/") for c in chosen):
            chosen.append(path)
    return chosen


class DockerRuntime:
    name: RuntimeName = "docker"

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    def connect(cls) -> DockerRuntime:
        import docker

        return cls(docker.from_env(timeout=API_TIMEOUT_S))

    # ------------------------------------------------------------------ start

    def start(self, request: StartRequest) -> Started:
        """Pull if needed, create, start, stream logs. Any failure removes the container."""
        from docker.errors import APIError, DockerException

        node = request.node
        try:
            plan = plan_container(request, node, node.cluster)
            images.ensure_image(self.client, plan.image.ref, worker=node.name)
        except (images.NoImage, images.PullFailed) as exc:
            raise StartFailed(str(exc)) from exc
        self._remove_by_name(plan.name)
        container = None
        try:
            container = self.client.containers.create(**plan.create_kwargs())
            container.start()
            container.reload()
        except (APIError, DockerException) as exc:
            if container is None:  # create failed: it may still have made one (docker-py retries, races)
                self._remove_by_name(plan.name)
            else:
                self._remove(container.id)
            raise StartFailed(self._refusal(plan, exc, node.name)) from exc
        state = container.attrs["State"]
        pid = int(state.get("Pid") or 0)
        start_time = processes.process_start_time(pid) if pid else None
        if not state.get("Running") or start_time is None:
            pump = LogPump(self.client, container.id, request.log_path)
            pump.run()  # the engine has all of it already: copy it synchronously
            code = self.client.api.inspect_container(container.id)["State"].get("ExitCode")
            self._remove(container.id)
            raise StartFailed(f"container {plan.name} ({plan.image.ref}) exited at once with code {code}")
        ensure_log_pump(self.client, container.id, request.log_path)
        log.info("started container %s (%s) for %s", plan.name, plan.image.ref, request.key)
        return Started(pid, start_time, container.id, plan.image.ref)

    def _refusal(self, plan: ContainerPlan, exc: Exception, worker: str) -> str:
        answer = getattr(exc, "explanation", None) or str(exc)
        text = f"the Docker engine on worker {worker} refused container {plan.name} ({plan.image.ref}): {answer}"
        if plan.gpu_ids and "device driver" in str(answer):
            text += (f"; it was asked for NVIDIA GPUs {', '.join(plan.gpu_ids)}: install the NVIDIA Container "
                     "Toolkit on the node (nvidia-ctk runtime configure --runtime=docker) and restart dockerd, "
                     "or run the node with --runtime process")
        return text

    # ------------------------------------------------------------ liveness

    def is_alive(self, record: BackendRecord) -> bool:
        """The container's main process is a host process: checked in /proc without asking
        the engine (supervision runs every second, also while dockerd restarts)."""
        return processes.is_alive(record.pid, record.start_time)

    def exit_status(self, record: BackendRecord) -> ExitStatus | None:
        from docker.errors import NotFound

        if not record.container_id:
            return None
        try:
            state = self.client.api.inspect_container(record.container_id)["State"]
        except NotFound:
            return None
        if state.get("Running"):
            return None
        flush_logs(record.container_id)
        return ExitStatus(state.get("ExitCode"), bool(state.get("OOMKilled")))

    # ---------------------------------------------------------------- stop

    def stop(self, record: BackendRecord, grace: float) -> bool:
        """SIGTERM (the image's stop signal), SIGKILL after ``grace`` s, then remove."""
        from docker.errors import APIError, NotFound

        was_running = processes.is_alive(record.pid, record.start_time)
        if record.container_id:
            try:
                self.client.api.stop(record.container_id, timeout=max(1, math.ceil(grace)))
            except NotFound:
                return False
            except APIError as exc:
                log.warning("stopping container %s: %s", record.container_id[:12], exc)
            flush_logs(record.container_id)
            self._remove(record.container_id)
        return was_running

    def discard(self, record: BackendRecord) -> None:
        if record.container_id:
            flush_logs(record.container_id)
            self._remove(record.container_id)

    def _remove(self, container_id: str) -> None:
        from docker.errors import APIError, NotFound

        try:
            self.client.api.remove_container(container_id, force=True)
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                raise
        _pumps.pop(container_id, None)

    def _remove_by_name(self, name: str) -> None:
        from docker.errors import NotFound

        try:
            self._remove(self.client.api.inspect_container(name)["Id"])
        except NotFound:
            pass

    # ------------------------------------------------------------ adoption

    def containers(self, cluster: str, node: str) -> list[dict[str, Any]]:
        """This node's containers of this cluster, running or not (inspect data)."""
        found = self.client.api.containers(all=True, filters={"label": [f"{LABEL}.cluster={cluster}",
                                                                        f"{LABEL}.node={node}"]})
        return [self.client.api.inspect_container(c["Id"]) for c in found]

    def adopt(self, node: NodeContext, registry: BackendRegistry) -> list[str]:
        """Make the registry and this node's labelled containers agree before supervision:
        per registry key, the recorded container stays; if it is gone or dead while
        another container of that key runs (the agent died between starting it and
        recording it), the running one is adopted from its labels; every other
        container of the key is a duplicate or a leftover and is removed. Returns what
        was done, for the agent's log."""
        from docker.errors import DockerException

        from gpufleet.node.registry import BackendRecord

        done: list[str] = []
        by_key: dict[str, list[dict[str, Any]]] = {}
        try:
            for info in self.containers(node.cluster, node.name):
                by_key.setdefault(info["Config"]["Labels"].get(f"{LABEL}.key", ""), []).append(info)
        except DockerException as exc:  # the records' /proc checks still work; say why nothing was adopted
            return [f"cannot list this node's containers (adoption by labels skipped): {exc}"]
        with registry.lock:
            for key, infos in by_key.items():
                record = registry.read(key) if key else None
                keep = record.container_id if record is not None and record.runtime == "docker" else None
                kept_alive = record is not None and keep is not None and self.is_alive(record) and any(
                    i["Id"] == keep for i in infos)
                if not kept_alive:
                    running = sorted((i for i in infos if i["State"].get("Running")),
                                     key=lambda i: i["Created"], reverse=True)
                    adopted = _record_from_labels(running[0], BackendRecord) if running else None
                    if adopted is not None:
                        registry.save(adopted)
                        keep = adopted.container_id
                        ensure_log_pump(self.client, adopted.container_id or "", Path(adopted.log_path))
                        done.append(f"adopted container {running[0]['Name'].lstrip('/')} by its labels")
                for info in infos:
                    if info["Id"] != keep:
                        self._remove(info["Id"])
                        done.append(f"removed container {info['Name'].lstrip('/')} (duplicate or leftover of {key})")
        return done

    def keep_logging(self, record: BackendRecord) -> None:
        if record.container_id:
            ensure_log_pump(self.client, record.container_id, Path(record.log_path))


def _record_from_labels(info: dict[str, Any], record_type: type[BackendRecord]) -> BackendRecord | None:
    raw = info["Config"]["Labels"].get(f"{LABEL}.record")
    pid = int(info["State"].get("Pid") or 0)
    start_time = processes.process_start_time(pid) if pid else None
    if not raw or start_time is None:
        return None
    try:
        record = record_type.model_validate_json(raw)
    except ValueError:
        return None
    return record.model_copy(update={"pid": pid, "start_time": start_time, "container_id": info["Id"],
                                     "runtime": "docker"})


# ---------------------------------------------------------------------- logs

_pumps: dict[str, LogPump] = {}
_pumps_lock = threading.Lock()
_TS_RE = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z ")


def ensure_log_pump(client: Any, container_id: str, log_path: Path) -> None:
    """One thread per container copies its output into the log file (started on demand:
    after a start, on adoption, by supervision after an agent restart)."""
    with _pumps_lock:
        pump = _pumps.get(container_id)
        if pump is not None and (pump.is_alive() or pump.finished):
            return
        pump = LogPump(client, container_id, log_path)
        _pumps[container_id] = pump
        pump.start()


def flush_logs(container_id: str, timeout: float = 3.0) -> None:
    """Wait (briefly) for an ended container's last lines to reach the log file."""
    pump = _pumps.get(container_id)
    if pump is not None and pump.is_alive():
        pump.join(timeout)


class LogPump(threading.Thread):
    """Follows the engine's log of one container and appends it to the instance's log,
    recording the last timestamp copied in ``<log>.<container>.since``."""

    def __init__(self, client: Any, container_id: str, log_path: Path) -> None:
        super().__init__(name=f"gpufleet-logs-{container_id[:12]}", daemon=True)
        self.client, self.container_id, self.log_path = client, container_id, log_path
        self.position = log_path.with_name(f"{log_path.name}.{container_id[:12]}.since")
        self.finished = False

    def run(self) -> None:
        from docker.errors import DockerException

        try:
            since = float(self.position.read_text()) if self.position.exists() else None
        except ValueError:
            since = None
        try:
            stream = self.client.api.logs(self.container_id, stream=True, follow=True, timestamps=True,
                                          since=since if since else None)
            self._copy(stream)
            self.finished = True
        except DockerException as exc:
            log.info("log stream of container %s ended: %s", self.container_id[:12], exc)
        except OSError as exc:
            log.warning("cannot write log of container %s: %s", self.container_id[:12], exc)

    def _copy(self, stream: Any) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        pending = b""
        with self.log_path.open("ab") as out:
            for chunk in stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                last = None
                for line in lines:
                    stamp, text = split_timestamp(line)
                    out.write(text + b"\n")
                    last = stamp or last
                out.flush()
                if last is not None:
                    self.position.write_text(f"{last + 1e-6:.6f}")
            if pending:
                out.write(split_timestamp(pending)[1])


def split_timestamp(line: bytes) -> tuple[float | None, bytes]:
    """``2025-01-02T03:04:05.123456789Z text`` -> (epoch seconds, text)."""
    match = _TS_RE.match(line)
    if not match:
        return None, line
    seconds = datetime.fromisoformat(match.group(1).decode() + "+00:00").timestamp()
    fraction = float(f"0.{match.group(2).decode()}") if match.group(2) else 0.0
    return seconds + fraction, line[match.end():]


def record_label(record: BackendRecord) -> str:
    """The record as a label (what adoption rebuilds it from); pid, its start time and the
    container id are not known before the start and are filled in then."""
    return json.dumps(record.model_copy(update={"pid": 0, "start_time": 0, "container_id": None})
                      .model_dump(mode="json"))
