"""The docker runtime against a real Docker engine: start, labels, mounts, logs, stop,
adoption by labels, exit code and OOM, the GPU device request, and image pulls from a
registry stand-in. Backends run in the host-runtime image (no registry is reachable):
the node's own llama.cpp build, bind-mounted read-only, serving the tiny model."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpufleet.core.backends import llama_cpp
from gpufleet.core.backends.launch import LaunchDescription, Program
from gpufleet.core.placement_spec import Placement
from gpufleet.core.schemas import DeploymentConfig, InstanceView, ModelSource
from gpufleet.core.states import InstanceState
from gpufleet.node import backends, processes
from gpufleet.node.context import NodeContext
from gpufleet.node.runtimes import StartFailed, StartRequest, get, images
from gpufleet.node.runtimes.docker import plan_container
from gpufleet.node.runtimes.host_image import ensure_host_runtime_image
from gpufleet.runtimes.llama_server import llama_server_executable
from tests.support.docker_engine import docker_client, labelled, remove_labelled
from tests.support.registry_standin import RegistryStandIn, build_image, tar_of

pytestmark = pytest.mark.docker
MiB = 1 << 20


@pytest.fixture(scope="module")
def client() -> Any:
    return docker_client()


@pytest.fixture(scope="module")
def base_image(client: Any) -> str:
    return ensure_host_runtime_image(client)


@pytest.fixture
def node(tmp_path: Path, base_image: str, client: Any) -> Iterator[NodeContext]:
    """A docker node of its own cluster (so cleanup and assertions see only its containers)."""
    cluster = f"test-{uuid.uuid4().hex[:8]}"
    ctx = NodeContext("dnode", tmp_path / "home", "127.0.0.1", runtime="docker", cluster=cluster,
                      host_runtime_image=base_image)
    yield ctx
    remove_labelled(client, cluster=cluster)


def instance(iid: int, model: Path, placement: Placement | None = None, image: str | None = None,
             restart_count: int = 0) -> InstanceView:
    now = datetime.now(timezone.utc)
    config = DeploymentConfig(source=ModelSource(kind="local_path", local_path=str(model)), image=image)
    return InstanceView(id=iid, name=f"tiny-{iid}", deployment="tiny", state=InstanceState.SCHEDULED, config=config,
                        placement=placement or Placement(worker="dnode", ram_claim=64 * MiB),
                        restart_count=restart_count, created_at=now, updated_at=now)


def chat(port: int) -> None:
    resp = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                      json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}, timeout=30)
    assert resp.status_code == 200, resp.text


def test_instance_container_serves_labelled_with_model_mount_logs_and_stop(
        client: Any, node: NodeContext, tiny_gguf: Path) -> None:
    inst = instance(7, tiny_gguf, restart_count=2)
    record = backends.launch(inst, tiny_gguf, node, None)
    assert record.runtime == "docker" and record.container_id
    backends.wait_healthy(record, node.bind_host, 60, tuple(record.health_paths))
    chat(record.port)

    info = client.api.inspect_container(record.container_id)
    labels = info["Config"]["Labels"]
    assert {k: labels[k] for k in ("gpufleet.cluster", "gpufleet.node", "gpufleet.deployment", "gpufleet.instance",
                                   "gpufleet.incarnation", "gpufleet.role", "gpufleet.key")} == {
        "gpufleet.cluster": node.cluster, "gpufleet.node": "dnode", "gpufleet.deployment": "tiny",
        "gpufleet.instance": "7", "gpufleet.incarnation": "2", "gpufleet.role": "server", "gpufleet.key": "7"}
    # the model's directory read-only at /models/<name>; the argv points there and listens inside
    [model_mount] = [m for m in info["Mounts"] if m["Destination"].startswith("/models/")]
    assert (model_mount["Source"], model_mount["RW"]) == (str(tiny_gguf.parent), False)
    argv = [*info["Config"]["Entrypoint"], *info["Config"]["Cmd"]]
    assert argv[argv.index("--model") + 1] == f"{model_mount['Destination']}/{tiny_gguf.name}"
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    # published on the node's address only; no GPU request for a CPU placement; memory limit with headroom
    assert info["HostConfig"]["PortBindings"] == {f"{record.port}/tcp": [{"HostIp": "127.0.0.1",
                                                                         "HostPort": str(record.port)}]}
    assert not info["HostConfig"].get("DeviceRequests")
    assert info["HostConfig"]["Memory"] == 64 * MiB + 1024 * MiB
    # the container's main process is the record's pid, a host process
    assert info["State"]["Pid"] == record.pid and processes.is_alive(record.pid, record.start_time)

    log = Path(record.log_path)
    deadline = time.monotonic() + 10
    while "print_timing" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    text = log.read_text()
    assert text.startswith("[gpufleet] starting on dnode (docker):") and "print_timing" in text  # the chat

    assert backends.stop(7, node, grace=5) is True
    assert labelled(client, cluster=node.cluster) == []
    assert backends.registry(node).get(7) is None
    assert not processes.is_alive(record.pid, record.start_time)


def _python_request(node: NodeContext, key: str, code: str, memory_limit: int | None = None) -> StartRequest:
    """A host-runtime container running this interpreter (for exit codes and memory)."""
    desc = LaunchDescription(engine="test", version="0", program=Program("executable", "python"),
                             args=["-c", code], port=None, health_paths=())
    return StartRequest(key=key, command=[sys.executable, "-c", code], desc=desc, env={}, port=0,
                        log_path=node.logs_dir / f"{key}.log", node=node, memory_limit=memory_limit,
                        labels={"gpufleet.cluster": node.cluster, "gpufleet.node": node.name, "gpufleet.key": key})


def _record(started: Any, key: str, node: NodeContext) -> Any:
    from gpufleet.node.registry import BackendRecord

    return BackendRecord(instance_id=int(key), instance_name=key, pid=started.pid, start_time=started.start_time,
                         port=0, log_path=str(node.logs_dir / f"{key}.log"), command=[], runtime="docker",
                         container_id=started.container_id)


def _wait_dead(runtime: Any, record: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while runtime.is_alive(record) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not runtime.is_alive(record)


def test_exit_code_and_oom_killed_come_from_the_engine(client: Any, node: NodeContext) -> None:
    runtime = get("docker")
    started = runtime.start(_python_request(node, "11", "import sys, time; print('bye', flush=True); "
                                                        "time.sleep(1); sys.exit(3)"))
    record = _record(started, "11", node)
    _wait_dead(runtime, record)
    status = runtime.exit_status(record)
    assert (status.code, status.oom_killed) == (3, False)
    assert "bye" in Path(record.log_path).read_text()  # streamed before the exit was read
    runtime.discard(record)
    assert labelled(client, cluster=node.cluster, key="11") == []

    hog = "import time; time.sleep(0.5); b = [bytearray(16 << 20) for _ in range(64)]; time.sleep(30)"
    started = runtime.start(_python_request(node, "12", hog, memory_limit=96 * MiB))
    record = _record(started, "12", node)
    _wait_dead(runtime, record)
    status = runtime.exit_status(record)
    assert status.oom_killed and status.code == 137, status
    assert "OOMKilled" in status.describe()
    runtime.discard(record)


def test_restart_adopts_by_labels_and_removes_duplicates(client: Any, node: NodeContext, tiny_gguf: Path) -> None:
    record = backends.launch(instance(21, tiny_gguf), tiny_gguf, node, None)
    registry = backends.registry(node)
    runtime = get("docker")
    # the agent died between starting the container and recording it: the record is gone
    registry.remove(record)
    # and a second container of the same key is around (a duplicate of an earlier attempt)
    plan = plan_container(_python_request(node, "21", "import time; time.sleep(60)"), node, node.cluster)
    kwargs = plan.create_kwargs() | {"name": plan.name + "-dup"}
    kwargs["labels"] = {**kwargs["labels"], "gpufleet.key": "21"}
    client.containers.create(**kwargs)

    done = runtime.adopt(node, registry)
    adopted = registry.get(21)
    assert adopted is not None and adopted.container_id == record.container_id and adopted.pid == record.pid
    assert adopted.runtime == "docker" and adopted.port == record.port
    assert any("adopted" in d for d in done) and any("removed" in d for d in done)
    assert [c.id for c in labelled(client, cluster=node.cluster)] == [record.container_id]
    # adopting again changes nothing: no duplicates
    assert runtime.adopt(node, registry) == []
    backends.wait_healthy(adopted, node.bind_host, 60, tuple(adopted.health_paths))
    backends.stop(21, node, grace=5)
    assert labelled(client, cluster=node.cluster) == []


def test_gpu_device_request_names_exactly_the_placed_gpus_and_refusal_leaves_nothing(
        client: Any, tmp_path: Path, base_image: str, tiny_gguf: Path) -> None:
    # GPUs 0-3 are real on this node (not declared), 4 is declared (virtual)
    node = NodeContext("gnode", tmp_path / "ghome", "127.0.0.1", virtual_gpus=frozenset({4}), runtime="docker",
                       cluster=f"test-{uuid.uuid4().hex[:8]}", host_runtime_image=base_image)
    placement = Placement(worker="gnode", gpu_indexes=[2, 0], vram_claim={2: 1 << 30, 0: 1 << 30},
                          tensor_split=[0.5, 0.5])
    inst = instance(31, tiny_gguf, placement)
    # a free port: a fixed one may be taken on a busy machine, and the engine then refuses
    # the container for that instead of for the GPU request this test is about
    port = processes.allocate_port("127.0.0.1", set())
    desc = llama_cpp.build_launch(inst.config, model_path=str(tiny_gguf), alias="tiny", host="127.0.0.1",
                                  port=port, placement=placement, default_context=512)
    request = StartRequest(key="31", command=desc.command(llama_server_executable()), desc=desc, env=desc.env,
                           port=port, log_path=node.logs_dir / "31.log", node=node,
                           labels={"gpufleet.cluster": node.cluster, "gpufleet.node": "gnode", "gpufleet.key": "31"})
    plan = plan_container(request, node, node.cluster)
    kwargs = plan.create_kwargs()
    [req] = kwargs["device_requests"]
    assert (req["Driver"], req["DeviceIDs"], req["Capabilities"], req["Count"]) == ("nvidia", ["0", "2"],
                                                                                    [["gpu"]], 0)
    # the container sees its two GPUs as 0 and 1: GPU 2 first, as the split expects
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "1,0"
    # what the engine received, as it records it (created, never started)
    created = client.containers.create(**kwargs | {"name": plan.name + "-probe"})
    try:
        [seen] = client.api.inspect_container(created.id)["HostConfig"]["DeviceRequests"]
        assert (seen["Driver"], seen["DeviceIDs"], seen["Capabilities"]) == ("nvidia", ["0", "2"], [["gpu"]])
    finally:
        created.remove(force=True)

    # started for real: this engine has no NVIDIA runtime; a clear ERROR, no container left
    with backends.registry(node).lock, pytest.raises(backends.BackendFailed) as failed:
        backends._spawn(inst, node, request.command, desc.env, port, request.log_path, desc=desc)
    message = str(failed.value)
    assert "refused container" in message and "could not select device driver" in message
    assert "NVIDIA GPUs 0, 2" in message and "gnode" in message
    assert labelled(client, cluster=node.cluster) == []
    assert backends.registry(node).get(31) is None

    # a placement on the declared GPU asks for no GPU at all
    virtual = Placement(worker="gnode", gpu_indexes=[4], vram_claim={4: 1 << 30})
    vdesc = llama_cpp.build_launch(inst.config, model_path=str(tiny_gguf), alias="tiny", host="127.0.0.1",
                                   port=40998, placement=virtual, default_context=512)
    vplan = plan_container(StartRequest(key="32", command=vdesc.command(["x"]), desc=vdesc, env=vdesc.env,
                                        port=40998, log_path=node.logs_dir / "32.log", node=node), node, node.cluster)
    assert "device_requests" not in vplan.create_kwargs()


@pytest.fixture
def registry_standin() -> Iterator[RegistryStandIn]:
    from gpufleet.node.runtimes.host_image import rootfs_tar

    standin = RegistryStandIn(rate=1 << 20).start()
    # the host-runtime root filesystem plus 3 MiB that do not compress: a pull of a few seconds
    standin.add("gpufleet/test-base", "pulled", build_image([rootfs_tar(),
                                                             tar_of({"data/payload.bin": os.urandom(3 * MiB)})]))
    yield standin
    standin.stop()


def test_pull_reports_progress_then_runs_from_the_pulled_image(
        client: Any, node: NodeContext, tiny_gguf: Path, registry_standin: RegistryStandIn) -> None:
    ref = f"{registry_standin.address}/gpufleet/test-base:pulled"
    try:
        seen: list[int] = []
        inst = instance(41, tiny_gguf)
        # the node's host-runtime base is the image on the registry: the launch pulls it first
        pulling = NodeContext(node.name, node.home, node.bind_host, runtime="docker", cluster=node.cluster,
                              host_runtime_image=ref)
        assert backends.pull_image(inst, pulling, seen.append) == ref
        assert seen[-1] == 100 and len(seen) >= 3 and seen == sorted(seen), seen
        assert any(0 < p < 100 for p in seen)
        assert images.describe_progress(seen[1]) == f"PULLING IMAGE {seen[1]} %"
        assert "HEAD /v2/gpufleet/test-base/manifests/pulled" in registry_standin.requests  # then by digest
        # present now: no second pull, no progress
        assert backends.pull_image(inst, pulling, seen.append) == ref and seen[-1] == 100
        record = backends.launch(inst, tiny_gguf, pulling, None)
        assert client.api.inspect_container(record.container_id)["Config"]["Image"] == ref
        backends.wait_healthy(record, node.bind_host, 60, tuple(record.health_paths))
        backends.stop(41, pulling, grace=5)
    finally:
        remove_labelled(client, cluster=node.cluster)
        client.images.remove(ref, force=True)


def test_pull_failure_is_an_error_naming_image_and_registry_answer(
        client: Any, node: NodeContext, tiny_gguf: Path, registry_standin: RegistryStandIn) -> None:
    missing = f"{registry_standin.address}/gpufleet/nothing-here:1"
    inst = instance(51, tiny_gguf, image=missing)
    with pytest.raises(backends.BackendFailed) as failed:
        backends.pull_image(inst, node, lambda _: None)
    assert str(failed.value).startswith(f"cannot pull image {missing} on worker dnode: ")
    assert "manifest unknown" in str(failed.value)  # the registry's own answer
    # the launch itself refuses the same way and leaves nothing behind
    with pytest.raises(backends.BackendFailed, match="manifest unknown"):
        backends.launch(inst, tiny_gguf, node, None)
    assert labelled(client, cluster=node.cluster) == []
    assert backends.registry(node).get(51) is None
    # an unreachable registry: the engine's answer, named too
    with pytest.raises(StartFailed, match="cannot pull image 127.0.0.1:9/gpufleet/x:1 on worker dnode: .*"):
        get("docker").start(StartRequest(
            key="52", command=["true"], desc=LaunchDescription(engine="test", version="0",
                                                               program=Program("executable", "true"), args=[]),
            env={}, port=0, log_path=node.logs_dir / "52.log", node=node, image="127.0.0.1:9/gpufleet/x:1"))


def test_the_node_lists_the_engine_images_it_holds(client: Any, base_image: str) -> None:
    """`backends ls` shows images: the table's image of the pinned version, or a node override."""
    from gpufleet.node.runtimes.images import engine_images

    table_ref = "ghcr.io/ggml-org/llama.cpp:server-b11434"  # the table's CPU image of llama.cpp b11434
    override = "registry.invalid/mirror/vllm:gpufleet-test"
    for ref in (table_ref, override):
        repo, tag = ref.rsplit(":", 1)
        client.images.get(base_image).tag(repo, tag)
    try:
        found = {(e.engine, e.location): e for e in engine_images(client, {"vllm": override})}
        llama = found[("llama.cpp", f"image {table_ref}")]
        assert (llama.version, llama.devices) == ("b11434", ["cpu"])
        vllm = found[("vllm", f"image {override}")]  # the override stands for every device kind
        assert (vllm.version, vllm.devices) == ("0.32.0", ["cpu", "cuda", "rocm"])
        assert not any(e == "vox-box" for e, _ in found)  # none of its images is here
    finally:
        for ref in (table_ref, override):
            client.images.remove(ref)
