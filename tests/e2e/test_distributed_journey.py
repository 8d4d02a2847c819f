"""A distributed instance end to end (`--distributed`): two node agents, one virtual GPU
each, that run llama.cpp's real rpc-server and an RPC-enabled llama-server. One
instance spans both: the part worker serves its GPU through an RPC server, the main
worker serves its own (virtual) GPU through a loopback RPC server, and its llama-server
splits the layers over the two. It answers chat; a killed RPC server puts it in ERROR
and the controller restarts the whole instance (llama.cpp's RPC client aborts when a server
it drives is gone, so the main server cannot outlive a part); `logs --part` reads the part
worker's rpc-server logs; deleting it stops every process on
both workers."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpufleet.cli.embedded import Child, _spawn, _wait_for_worker, stop_children
from gpufleet.node.registry import BackendRegistry
from tests.e2e.conftest import E2ECluster, chat, cmdline, pid_alive, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.rpc]


def start_rpc_node(cluster: E2ECluster, name: str, binaries: tuple[list[str], list[str]]) -> Child:
    """A node with one 1 GiB virtual GPU (the tiny model needs ≈708 MiB on each GPU, mostly the
    measured CUDA overhead), in pool `rpc`, pointed at the RPC binaries."""
    llama_server, rpc_server = binaries
    env = {**cluster.env, "GPUFLEET_RPC_LLAMA_SERVER": llama_server[0], "GPUFLEET_RPC_SERVER": rpc_server[0]}
    args = [sys.executable, "-m", "gpufleet.cli.main", "node", "--name", name, "--server", cluster.api_url,
            "--stop-backends-on-exit", "--virtual-gpus", "T4-1G:1", "--label", "pool=rpc"]
    child = _spawn(f"node-{name}", args, env, cluster.home / "logs")
    _wait_for_worker(cluster.api_url, name, child, 60, cluster.api_key)
    return child


@pytest.fixture(scope="module")
def rpc_pool(cluster: E2ECluster, rpc_binaries: tuple[list[str], list[str]]) -> Iterator[list[Child]]:
    children = [start_rpc_node(cluster, "ra", rpc_binaries), start_rpc_node(cluster, "rb", rpc_binaries)]
    try:
        yield children
    finally:
        stop_children(children)


def records(cluster: E2ECluster, node: str) -> list:
    return BackendRegistry(cluster.node_home(node) / "backends").all()


def running(cluster: E2ECluster, name: str, restarts: int = 0) -> dict:
    return wait_until(lambda: next((i for i in cluster.instances(name)
                                    if i["state"] == "RUNNING" and i["restart_count"] == restarts), None),
                      timeout=120, what=f"{name} RUNNING after {restarts} restarts")


def test_distributed_instance_runs_across_two_workers(cluster: E2ECluster, rpc_pool: list[Child],
                                                      tiny_gguf: Path) -> None:
    workers = {w["name"]: w for w in cluster.cli_json("workers")}
    assert all("llama.cpp-rpc" in workers[n]["capabilities"] for n in ("ra", "rb"))

    # two GPUs per replica, one GPU per worker: only both workers together hold it
    # (log verbosity 4: llama.cpp then logs each device's buffers)
    cluster.cli("deploy", "--name", "dist", "--local-path", str(tiny_gguf), "--distributed",
                "--gpus-per-replica", "2", "--worker-selector", "pool=rpc", "--backend-param=--verbosity=4")
    inst = running(cluster, "dist")
    placement = inst["placement"]
    main = inst["worker"]
    [part] = placement["parts"]
    assert placement["stage"] == "distributed" and {main, part["worker"]} == {"ra", "rb"}
    assert len(placement["tensor_split"]) == 2
    [reported] = inst["rpc_servers"]
    assert (reported["worker"], reported["gpu_index"]) == (part["worker"], 0)
    assert chat(inst["port"])

    # the main llama-server drives two RPC devices: the part's server, then its own loopback one
    [server] = [r for r in records(cluster, main) if r.role == "server"]
    [loopback] = [r for r in records(cluster, main) if r.role == "rpc"]
    [remote] = records(cluster, part["worker"])
    assert remote.role == "rpc" and remote.pid == reported["pid"]
    args = cmdline(server.pid)
    assert args[args.index("--rpc") + 1] == f"127.0.0.1:{remote.port},127.0.0.1:{loopback.port}"
    assert args[args.index("--tensor-split") + 1] == ",".join(f"{x:g}" for x in placement["tensor_split"])
    log = Path(server.log_path).read_text()
    for port in (remote.port, loopback.port):  # llama.cpp put model weights on both RPC devices
        assert any(f"[127.0.0.1:{port}] model buffer size" in line for line in log.splitlines()), log

    # an RPC server dies: the instance goes to ERROR, then the whole instance is restarted
    os.kill(remote.pid, signal.SIGKILL)
    failed = wait_until(lambda: next((i for i in cluster.api_instances("dist") if i["state"] == "ERROR"), None),
                        timeout=60, interval=0.05, what="ERROR after the RPC server was killed")
    assert "rpc-server for GPU 0" in failed["state_message"] or "exited" in failed["state_message"]
    again = running(cluster, "dist", restarts=1)
    [remote2] = records(cluster, part["worker"])
    assert remote2.pid != remote.pid and pid_alive(remote2.pid)
    assert again["rpc_servers"][0]["port"] == remote2.port
    assert chat(again["port"])

    # the part worker's rpc-server logs, this run's and the killed run's (`logs --part`)
    part_log = cluster.cli("logs", str(again["id"]), "--part", part["worker"]).stdout
    assert part_log.startswith(f"[gpufleet] starting on {part['worker']}") and "rpc-server" in part_log.splitlines()[0]
    assert "run 2 of" in part_log
    assert "run 1 of" in cluster.cli("logs", str(again["id"]), "--part", part["worker"], "--previous").stdout
    assert "run 2 of" in cluster.cli("logs", str(again["id"]), "--part", part["worker"], "--gpu", "0").stdout
    wrong = cluster.cli("logs", str(again["id"]), "--part", "nowhere", check=False)
    assert wrong.returncode != 0 and f"its part workers: {part['worker']}" in wrong.stdout + wrong.stderr

    # delete: every process on both workers stops, and the registries are empty
    pids = [r.pid for node in ("ra", "rb") for r in records(cluster, node)]
    assert len(pids) == 3
    cluster.cli("rm", "dist")
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=60, what="all processes of dist to stop")
    assert records(cluster, "ra") == [] and records(cluster, "rb") == []
