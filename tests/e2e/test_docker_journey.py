"""The docker runtime end to end: a node agent with `--runtime docker` in the session's
real cluster (Prefect, gpufleet server, node agents), backends in containers of a real
Docker engine. No registry is reachable, so the node runs its own llama.cpp build in the
host-runtime base image (built locally with `docker import`)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from gpufleet.cli.embedded import Child, _spawn, _wait_for_worker
from gpufleet.node.runtimes.host_image import ensure_host_runtime_image
from tests.e2e.conftest import E2ECluster, chat, wait_until
from tests.support.docker_engine import docker_client

pytestmark = [pytest.mark.e2e, pytest.mark.docker]
NODE = "node-d"


def start_docker_node(cluster: E2ECluster, image: str) -> Child:
    args = [sys.executable, "-m", "gpufleet.cli.main", "node", "--name", NODE, "--server", cluster.api_url,
            "--stop-backends-on-exit", "--runtime", "docker", "--host-runtime-image", image,
            "--label", "runtime=docker"]
    child = _spawn(f"node-{NODE}", args, cluster.env, cluster.home / "logs")
    _wait_for_worker(cluster.api_url, NODE, child, 60, cluster.api_key)
    cluster.children.append(child)
    return child


def containers(label_filter: dict[str, str]) -> list[Any]:
    client = docker_client()
    return client.containers.list(all=True, filters={"label": [f"{k}={v}" for k, v in label_filter.items()]})


def running(cluster: E2ECluster) -> list[dict]:
    return [i for i in cluster.instances("dtiny") if i["state"] == "RUNNING" and not i["deleting"]]


def test_docker_node_runs_each_replica_in_its_own_container(cluster: E2ECluster, tiny_gguf: Path) -> None:
    client = docker_client()
    image = ensure_host_runtime_image(client)
    label = urlsplit(cluster.api_url).netloc  # the node's cluster label: the server's address
    mine = {"gpufleet.cluster": label, "gpufleet.node": NODE}
    node = start_docker_node(cluster, image)
    try:
        [worker] = [w for w in cluster.cli_json("workers") if w["name"] == NODE]
        assert worker["runtime"] == "docker"
        assert "docker" in cluster.cli("workers").stdout

        # deploy 2 replicas on the docker node: two labelled containers answering chat
        cluster.cli("deploy", "--name", "dtiny", "--local-path", str(tiny_gguf), "--replicas", "2",
                    "--worker-selector", "runtime=docker")
        insts = running(cluster)
        assert len(insts) == 2 and {i["worker"] for i in insts} == {NODE}
        boxes = containers({**mine, "gpufleet.deployment": "dtiny"})
        assert len(boxes) == 2 and all(b.status == "running" for b in boxes)
        by_instance = {b.labels["gpufleet.instance"]: b for b in boxes}
        assert set(by_instance) == {str(i["id"]) for i in insts}
        for inst in insts:
            box = by_instance[str(inst["id"])]
            assert box.labels["gpufleet.role"] == "server" and box.labels["gpufleet.incarnation"] == "0"
            assert box.attrs["State"]["Pid"] == inst["pid"]
            assert box.image.tags == [image]
            chat(inst["port"])

        # logs: gpufleet's start line, then the server's own output streamed from the container
        first = insts[0]
        logs = cluster.cli("logs", str(first["id"])).stdout
        assert f"[gpufleet] starting on {NODE} (docker)" in logs and "listening" in logs

        # a container killed under it: ERROR with the exit code, then restarted in a new container
        victim = by_instance[str(first["id"])]
        subprocess.run(["docker", "kill", victim.id], check=True, capture_output=True)
        err = wait_until(lambda: next((i for i in cluster.api_instances("dtiny")
                                       if i["id"] == first["id"] and i["state"] == "ERROR"), None),
                         timeout=30, interval=0.05, what="ERROR after docker kill")
        assert "exited unexpectedly with code 137" in err["state_message"] and NODE in err["state_message"]
        back = wait_until(lambda: next((i for i in running(cluster)
                                        if i["id"] == first["id"] and i["restart_count"] == 1), None),
                          timeout=90, what="restart after docker kill")
        chat(back["port"])
        boxes = containers({**mine, "gpufleet.deployment": "dtiny"})
        assert len(boxes) == 2 and victim.id not in {b.id for b in boxes}  # the dead one was removed
        restarted = next(b for b in boxes if b.labels["gpufleet.instance"] == str(first["id"]))
        assert restarted.labels["gpufleet.incarnation"] == "1"

        # the agent dies hard and comes back: its containers are adopted, none duplicated
        before = {b.id: b.attrs["State"]["Pid"] for b in boxes}
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()
        cluster.children.remove(node)
        assert all(chat(i["port"]) for i in running(cluster))  # containers keep serving
        node = start_docker_node(cluster, image)
        time.sleep(3)  # a few supervision rounds
        after = containers({**mine, "gpufleet.deployment": "dtiny"})
        assert {b.id: b.attrs["State"]["Pid"] for b in after} == before
        insts = wait_until(lambda: len(r := running(cluster)) == 2 and r, timeout=30, what="2 RUNNING after adoption")
        assert {i["pid"] for i in insts} == set(before.values())
        for inst in insts:
            chat(inst["port"])
        # the log keeps flowing after adoption
        chat(back["port"])
        wait_until(lambda: cluster.cli("logs", str(back["id"])).stdout.count("print_timing") >= 2,
                   timeout=15, what="log lines after adoption")

        # scale down: the surplus container is stopped and removed
        cluster.cli("scale", "dtiny", "1")
        [kept] = running(cluster)
        boxes = containers({**mine, "gpufleet.deployment": "dtiny"})
        assert [b.labels["gpufleet.instance"] for b in boxes] == [str(kept["id"])]

        # delete: nothing of this cluster is left in the engine
        cluster.cli("rm", "dtiny")
        out = subprocess.run(["docker", "ps", "-a", "-q", "--filter", f"label=gpufleet.cluster={label}"],
                             check=True, capture_output=True, text=True).stdout
        assert out.strip() == ""
    finally:
        if node in cluster.children:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(30)
            except subprocess.TimeoutExpired:
                node.proc.kill()
            cluster.children.remove(node)
        for box in containers(mine):
            box.remove(force=True)
        subprocess.run([sys.executable, "-m", "gpufleet.cli.main", "rm", "dtiny"], env=cluster.env,
                       capture_output=True, timeout=120)
        # the other journeys place on any ready worker: wait until this one is no longer ready
        wait_until(lambda: not any(w["name"] == NODE and w["ready"] for w in cluster.cli_json("workers")),
                   timeout=30, what=f"{NODE} no longer ready")
