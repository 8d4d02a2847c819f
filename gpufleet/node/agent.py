"""`gpufleet node`: one per machine. It registers the node's inventory, sends
heartbeats, serves its Prefect work queue with the in-process worker, serves
backend logs, and supervises the backends it started (including re-adopting them
after its own restart and stopping any the server no longer knows)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from gpufleet import orchestration
from gpufleet.client import ApiError, GpufleetClient, ServerUnavailable
from gpufleet.core.plan import PLANNED_STOP
from gpufleet.core.schemas import RPC_CAPABILITY, GpuInfo, InstanceStateUpdate, InstanceView, WorkerRegistration
from gpufleet.core.states import ACTIVE_ON_NODE, InstanceState
from gpufleet.node import backends, disk_bounds, engines, node_auth, probes, processes, runtimes
from gpufleet.node.context import NodeContext
from gpufleet.node import inventory
from gpufleet.node.inventory import total_memory
from gpufleet.node.log_server import create_log_app
from gpufleet.node.registry import BackendRecord
from gpufleet.prefect_layer import prefect_layer
from gpufleet.runtimes import llama_rpc
from gpufleet.settings import HEARTBEAT_INTERVAL_S

log = logging.getLogger("gpufleet.node")
SUPERVISE_INTERVAL_S = 1.0


@dataclass
class NodeConfig:
    name: str
    server_url: str
    context: NodeContext
    gpus: list[GpuInfo]
    labels: dict[str, str] = field(default_factory=dict)
    api_port: int = 0
    stop_backends_on_exit: bool = False
    ram_reserved: int = 0  # bytes of RAM placement leaves free (the OS, other services)
    vram_reserved: int = 0  # bytes left free on each GPU
    virtual_gpus_spec: str | None = None  # --virtual-gpus, re-read for each heartbeat's usage
    join_token: str | None = None  # --join-token: traded once for this node's credentials (node_auth)


def node_capabilities() -> list[str]:
    """What this node reports it can run, so placement only uses it for what it can."""
    reason = llama_rpc.rpc_unavailable_reason()
    if reason is not None:
        log.info("distributed instances (llama.cpp RPC) are not available here: %s", reason)
        return []
    return [RPC_CAPABILITY]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class NodeAgent:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.node = config.context
        self.registry = backends.registry(self.node)
        # the node's own key once it has one (never an inherited GPUFLEET_API_KEY): see credentials()
        self.credentials = node_auth.load(self.node.home, config.name)
        self.client = GpufleetClient(config.server_url, api_key=self.credentials.node_key if self.credentials else "")
        self.api_port = config.api_port or free_port(self.node.bind_host)
        self._stop = asyncio.Event()
        self._prefect_worker: object | None = None
        self._prober = probes.Prober()

    # ---------------------------------------------------------------- lifecycle

    def registration(self) -> WorkerRegistration:
        return WorkerRegistration(
            name=self.config.name,
            address=f"http://{self.node.bind_host}:{self.api_port}",
            labels=self.config.labels,
            gpus=self.config.gpus,
            cpu_count=os.cpu_count() or 1,
            memory_total=total_memory(),
            work_queue=orchestration.node_queue(self.config.name),
            ram_reserved=self.config.ram_reserved,
            vram_reserved=self.config.vram_reserved,
            capabilities=node_capabilities(),
            engines=engines.node_engines(self.node),
            runtime="docker" if self.node.runtime == "docker" else "process",
        )

    def _use_credentials(self, creds: node_auth.NodeCredentials | None) -> None:
        self.credentials = creds
        self.client.close()
        self.client = GpufleetClient(self.config.server_url, api_key=creds.node_key if creds else "")
        node_auth.use_in_process(creds)

    async def register(self) -> None:
        """Join first when there is a join token and no credential yet; a stored credential the
        server refuses (revoked, new database) is replaced by joining again with the token."""
        delay = 0.2
        while not self._stop.is_set():
            try:
                if self.credentials is None and self.config.join_token:
                    self._use_credentials(await asyncio.to_thread(
                        node_auth.join, self.config.server_url, self.config.name, self.config.join_token,
                        self.node.home))
                await asyncio.to_thread(self.client.register_worker, self.registration())
                log.info("registered node %s with %s", self.config.name, self.client.base_url)
                return
            except ApiError as exc:
                if exc.status not in (401, 403):
                    raise
                if self.credentials is not None and self.config.join_token:
                    log.warning("the server refused this node's credential (%s); joining again", exc.detail)
                    node_auth.forget(self.node.home)
                    self.credentials = None
                    continue
                raise node_auth.JoinFailed(
                    f"the server at {self.config.server_url} refused node {self.config.name}: {exc.detail}. "
                    "Start it with --join-token (printed by `gpufleet server`/`up`; GPUFLEET_JOIN_TOKEN)") from exc
            except ServerUnavailable as exc:
                log.warning("%s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def adopt_backends(self) -> None:
        """Reconcile this node's registry with the server after a (re)start:
        live backends and RPC servers of known instances are kept, those of instances
        the server no longer has are stopped, and dead ones are reported."""
        me = self.config.name
        known = {i.id: i for i in self.client.list_instances(worker=me)}  # incl. RPC parts here
        if self.node.runtime == "docker" or any(r.runtime == "docker" for r in self.registry.all()):
            # containers by their labels first: no duplicates, none unknown to the registry
            for done in runtimes.get("docker").adopt(self.node, self.registry):  # type: ignore[attr-defined]
                log.info("%s", done)
        for record in self.registry.all():
            inst = known.get(record.instance_id)
            alive = backends.is_alive(record)
            if inst is None or inst.deleting:
                log.info("stopping %s of unknown/deleted instance %d (pid %d)",
                         record.describe(), record.instance_id, record.pid)
                backends.stop(record.instance_id, self.node, grace=5)
            elif alive:
                log.info("re-adopted %s of %s (pid %d, port %d)", record.describe(), inst.name, record.pid, record.port)
                if record.role == "server" and inst.state == InstanceState.UNREACHABLE:
                    self._report(inst.id, InstanceState.RUNNING,
                                 f"serving on {me}:{record.port} (re-adopted after agent restart)")
                elif inst.state == InstanceState.UNREACHABLE and f"part worker {me} " in inst.state_message:
                    self._report(inst.id, InstanceState.RUNNING,
                                 f"serving on {inst.worker}:{inst.port}; RPC part on {me} is back")
            else:
                self._report_exit(record, "exited while the node agent was down")
        planned = self._planned_stops()
        for inst in known.values():
            if inst.state in ACTIVE_ON_NODE and not inst.deleting and (missing := self._missing(inst)):
                if inst.id in planned:
                    self._report(inst.id, InstanceState.ERROR,
                                 f"{PLANNED_STOP} {me} when it last exited ({missing}); starting it again")
                else:
                    self._report(inst.id, InstanceState.ERROR,
                                 f"{missing} not running on worker {me} after the node agent restarted")

    def _missing(self, inst: InstanceView) -> str | None:
        """What this node should run for an active instance but does not."""
        if inst.worker == self.config.name:
            return None if self.registry.get(inst.id) else "backend"
        part = next((p for p in inst.placement.parts if p.worker == self.config.name), None) if inst.placement else None
        gone = [g for g in part.gpu_indexes if self.registry.get_rpc(inst.id, g) is None] if part else []
        return f"rpc-server for GPU {', '.join(map(str, gone))}" if gone else None

    def _report(self, instance_id: int, state: InstanceState, message: str) -> None:
        try:
            self.client.report_state(instance_id, InstanceStateUpdate(state=state, message=message,
                                                                      worker=self.config.name))
        except ApiError as exc:
            log.info("could not report %s for instance %d: %s", state, instance_id, exc.detail)

    def _report_exit(self, record: BackendRecord, how: str) -> None:
        with self.registry.lock:
            current = self.registry.read(record.key)
            if current is None or current.stopping or current.pid != record.pid:
                return  # stopped on purpose, or relaunched, meanwhile
        status = backends.exit_status(record)  # exit code (and OOM flag, for a container)
        detail = status.describe() if status is not None else ""
        # Report first, forget after: if the server is unreachable the record stays
        # and the next supervision round reports again.
        self._report(
            record.instance_id,
            InstanceState.ERROR,
            f"{record.describe()} {how}{detail} on worker {self.config.name}; last log lines:\n"
            f"{backends.last_log_lines(record)}",
        )
        with self.registry.lock:
            current = self.registry.read(record.key)
            if current is not None and current.pid == record.pid:
                self.registry.remove(record)
                backends.discard(record)  # a container goes once its exit is reported

    def supervise_once(self) -> None:
        for record in self.registry.all():
            if not record.stopping and not backends.is_alive(record):
                self._report_exit(record, "exited unexpectedly")
            elif record.runtime == "docker" and not record.stopping:
                runtimes.get("docker").keep_logging(record)  # type: ignore[attr-defined]
        processes.reap_children()

    def probe_once(self) -> None:
        """Probe every backend that became healthy; one that failed PROBE_FAILURES probes in a
        row is reported ERROR (first, so a failed report is retried next round) and stopped."""
        candidates = [r for r in self.registry.all()
                      if r.role == "server" and r.healthy_path and not r.stopping and backends.is_alive(r)]
        self._prober.forget({(r.key, r.pid) for r in candidates})
        for record in candidates:
            problems = self._prober.observe(record, probes.probe(record, self.node.bind_host))
            if problems is None:
                continue
            with self.registry.lock:
                current = self.registry.read(record.key)
                if current is None or current.stopping or current.pid != record.pid:
                    continue  # stopped on purpose, or relaunched, meanwhile
            self._report(record.instance_id, InstanceState.ERROR,
                         f"backend stopped answering its health probe {record.healthy_path} on worker "
                         f"{self.config.name} ({len(problems)} probes {probes.PROBE_INTERVAL_S:g} s apart: "
                         f"{problems[-1]}); stopped it (pid {record.pid}); last log lines:\n"
                         f"{backends.last_log_lines(record)}")
            backends.stop(record.instance_id, self.node, grace=2)

    # ---------------------------------------------------------------- loops

    async def probe_loop(self) -> None:
        while not self._stop.is_set():
            await self._sleep(probes.PROBE_INTERVAL_S)
            try:
                await asyncio.to_thread(self.probe_once)
            except (ServerUnavailable, ApiError) as exc:
                log.warning("probe report failed: %s", exc)

    async def heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            try:
                usage = await asyncio.to_thread(self.gpus_used_outside)
                if await asyncio.to_thread(self.client.heartbeat, self.config.name, usage):
                    log.info("server had lost this node; re-reporting backends")
                    await asyncio.to_thread(self.adopt_backends)
            except ApiError as exc:
                if exc.status in (401, 404):  # server lost us (new database, `workers rm --force`, a revoked
                    # credential: register, joining again with the token), then
                    await self.register()  # then stop what is no longer placed here, re-report the rest
                    await asyncio.to_thread(self.adopt_backends)
            except ServerUnavailable as exc:
                log.warning("heartbeat failed: %s", exc)
            await self._sleep(HEARTBEAT_INTERVAL_S)

    def gpus_used_outside(self) -> dict[int, int] | None:
        """What other programs hold on each GPU now (None: not measurable this time)."""
        if not self.config.gpus:
            return None
        own = frozenset(r.pid for r in self.registry.all())
        try:
            return inventory.gpus_used_outside(self.config.virtual_gpus_spec, own)
        except inventory.VirtualGpuError as exc:
            log.warning("cannot re-read the declared GPUs: %s", exc)
            return None

    async def supervise_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(self.supervise_once)
            except (ServerUnavailable, ApiError) as exc:
                log.warning("supervision report failed: %s", exc)
            await self._sleep(SUPERVISE_INTERVAL_S)

    async def cleanup_loop(self) -> None:
        """The RPC tensor cache and the logs stay within their bounds (gpufleet.node.disk_bounds)."""
        while not self._stop.is_set():
            try:
                running = [r.instance_id for r in self.registry.all()]
                await asyncio.to_thread(disk_bounds.cleanup, self.node.rpc_cache_dir, self.node.logs_dir, running)
            except (OSError, ValueError) as exc:
                log.warning("disk clean-up failed: %s", exc)
            await self._sleep(disk_bounds.CLEANUP_INTERVAL_S)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    async def worker_loop(self) -> None:
        from prefect.client.orchestration import get_client

        queue = orchestration.node_queue(self.config.name)
        async with get_client() as prefect:
            await orchestration.ensure_pool(prefect)
            await orchestration.ensure_queue(prefect, queue)
        prefect_worker = prefect_layer().worker_class(
            work_pool_name=orchestration.POOL,
            work_queues=[queue],
            name=f"node-{self.config.name}",
            limit=None,
        )
        self._prefect_worker = prefect_worker
        await prefect_worker.start(printer=log.info)

    def poke(self) -> None:
        if self._prefect_worker is not None:
            self._prefect_worker.poke()  # type: ignore[attr-defined]

    def start_api(self) -> uvicorn.Server:
        app = create_log_app(self.node, self.registry, poke=self.poke,
                             server_key=lambda: self.credentials.server_key if self.credentials else None)
        server = uvicorn.Server(
            uvicorn.Config(app, host=self.node.bind_host, port=self.api_port, log_level="warning")
        )
        threading.Thread(target=server.run, name="gpufleet-node-api", daemon=True).start()
        return server

    async def run(self) -> None:
        disk_bounds.limits()  # a bad GPUFLEET_*_MAX_GIB stops the node at once, naming it
        self.node.export()
        node_auth.use_in_process(self.credentials)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        api = self.start_api()
        await self.register()
        await asyncio.to_thread(self.adopt_backends)
        tasks = [
            asyncio.create_task(self.heartbeat_loop()),
            asyncio.create_task(self.supervise_loop()),
            asyncio.create_task(self.probe_loop()),
            asyncio.create_task(self.cleanup_loop()),
            asyncio.create_task(self.worker_loop()),
        ]
        log.info("node %s ready: queue %s, api %s", self.config.name,
                 orchestration.node_queue(self.config.name), self.registration().address)
        await self._stop.wait()
        log.info("node %s stopping", self.config.name)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.config.stop_backends_on_exit:
            await asyncio.to_thread(self.stop_all_backends)
        api.should_exit = True
        self.client.close()

    def stop_all_backends(self) -> None:
        """A planned stop (`gpufleet down`): the instances are written down first, so that the
        next start reports them as stopped on purpose and they come back at once, not through
        the crash back-off."""
        stopped = sorted({r.instance_id for r in self.registry.all()})
        self._planned_file.write_text(json.dumps(stopped))
        for instance_id in stopped:
            log.info("stopping what runs for instance %d", instance_id)
            backends.stop(instance_id, self.node, grace=5)

    @property
    def _planned_file(self) -> Path:
        return self.node.home / "planned-stop.json"

    def _planned_stops(self) -> set[int]:
        """The instances this node stopped on purpose when it last exited (read once)."""
        try:
            ids = set(json.loads(self._planned_file.read_text()))
        except (FileNotFoundError, ValueError):
            return set()
        self._planned_file.unlink(missing_ok=True)
        return ids
