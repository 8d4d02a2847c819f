"""User journeys end to end: real Prefect server, gpufleet server, two node agents,
real llama.cpp servers answering HTTP. node-b declares one 2.5 GiB GPU; node-a is CPU only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.e2e.conftest import E2ECluster, chat, cmdline, pid_alive, wait_until

GiB = 1 << 30


def running(instances: list[dict]) -> list[dict]:
    return [i for i in instances if i["state"] == "RUNNING" and not i["deleting"]]


def arg_after(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_deploy_scale_stop_start_delete(cluster: E2ECluster, tiny_gguf: Path) -> None:
    # 2. deploy two replicas: both become real llama.cpp servers on their own ports
    out = cluster.cli("deploy", "--name", "tiny", "--local-path", str(tiny_gguf), "--replicas", "2")
    assert "deployment tiny created with 2 replica(s)" in out.stdout
    insts = cluster.instances("tiny")
    assert len(running(insts)) == 2
    assert len({i["port"] for i in insts}) == 2
    for i in insts:
        # placement: the tiny model (≈708 MiB VRAM, mostly the measured per-GPU CUDA overhead of 705 MiB,
        # gpufleet/core/estimation/cuda_overhead.py) fits node-b's GPU 0
        assert (i["worker"], i["gpu_indexes"]) == ("node-b", [0])
        assert pid_alive(i["pid"])
        cmd = cmdline(i["pid"])
        assert arg_after(cmd, "--port") == str(i["port"])
        assert arg_after(cmd, "--n-gpu-layers") == "999"
        env = Path(f"/proc/{i['pid']}/environ").read_bytes().split(b"\0")
        assert b"CUDA_VISIBLE_DEVICES=0" in env
        assert chat(i["port"])
        assert list(cluster.node_home("node-b").glob(f"logs/{i['id']}-*.log"))
    first_pids = {i["id"]: i["pid"] for i in insts}

    # 3. ls / ps
    [dep] = [d for d in cluster.cli_json("ls") if d["name"] == "tiny"]
    assert (dep["replicas"], dep["ready_replicas"], dep["backend"], dep["state"]) == (2, 2, "llama.cpp", "RUNNING")
    table = cluster.cli("ps", "tiny").stdout
    assert "RUNNING" in table and "node-b" in table

    # 4. scale up: the third still fits GPU 0 (3 × 708 MiB ≤ 2.5 GiB), the fourth (4 × 708 > 2560 MiB) goes to
    # node-a's CPU: node-b has a GPU, so its own CPU is not used without --cpu-offloading
    cluster.cli("scale", "tiny", "3")
    assert {i["worker"] for i in running(cluster.instances("tiny"))} == {"node-b"}
    cluster.cli("scale", "tiny", "4")
    insts = running(cluster.instances("tiny"))
    assert len(insts) == 4
    [cpu] = [i for i in insts if i["worker"] == "node-a"]
    assert cpu["gpu_indexes"] == [] and arg_after(cmdline(cpu["pid"]), "--n-gpu-layers") == "0"
    gpu_claims = sum(i["placement"]["vram_claim"].get("0", 0) for i in insts if i["worker"] == "node-b")
    assert 0 < gpu_claims <= 5 * GiB // 2
    assert all(pid_alive(p) for p in first_pids.values())  # scaling up left existing replicas alone

    # rm-instance: the instance and its process go, a replacement keeps 4 replicas
    victim = next(i for i in insts if i["id"] in first_pids)
    out = cluster.cli("rm-instance", str(victim["id"]))
    assert f"deleting instance {victim['id']}" in out.stdout
    assert not pid_alive(victim["pid"])
    insts = running(cluster.instances("tiny"))
    assert len(insts) == 4 and victim["id"] not in {i["id"] for i in insts}
    assert all(chat(i["port"]) for i in insts)

    # stop = scale to 0: instances deleted, processes gone, claims released
    pids = [i["pid"] for i in insts]
    cluster.cli("stop", "tiny")
    assert cluster.instances("tiny") == []
    assert not any(pid_alive(p) for p in pids)
    [dep] = [d for d in cluster.cli_json("ls") if d["name"] == "tiny"]
    assert (dep["replicas"], dep["ready_replicas"], dep["state"]) == (0, 0, "STOPPED")

    # start = scale to 1
    cluster.cli("start", "tiny")
    [inst] = running(cluster.instances("tiny"))
    assert chat(inst["port"])

    # rm: deployment, instances and processes gone
    cluster.cli("rm", "tiny")
    assert "tiny" not in {d["name"] for d in cluster.cli_json("ls")}
    assert not pid_alive(inst["pid"])
    assert cluster.instances() == []


def test_edit_applies_to_new_instances_only(cluster: E2ECluster, tiny_gguf: Path) -> None:
    cluster.cli("deploy", "--name", "edited", "--local-path", str(tiny_gguf))
    [old] = cluster.instances("edited")
    assert arg_after(cmdline(old["pid"]), "--ctx-size") == "512"  # min(4096, model's 512)

    out = cluster.cli("edit", "edited", "--backend-param=--ctx-size=256")
    assert "1 existing instance(s) keep running unchanged" in out.stdout
    [same] = cluster.instances("edited")
    assert (same["id"], same["pid"], same["config"]["backend_params"]) == (old["id"], old["pid"], [])
    assert pid_alive(old["pid"])

    cluster.cli("scale", "edited", "2")
    [new] = [i for i in cluster.instances("edited") if i["id"] != old["id"]]
    assert new["config"]["backend_params"] == ["--ctx-size=256"]
    assert arg_after(cmdline(new["pid"]), "--ctx-size") == "256"
    assert arg_after(cmdline(old["pid"]), "--ctx-size") == "512"
    cluster.cli("rm", "edited")


def test_logs_tail_and_follow(cluster: E2ECluster, tiny_gguf: Path) -> None:
    cluster.cli("deploy", "--name", "logged", "--local-path", str(tiny_gguf))
    [inst] = cluster.instances("logged")
    full = cluster.cli("logs", str(inst["id"])).stdout
    assert f"[gpufleet] starting on {inst['worker']}" in full
    assert f"--port {inst['port']}" in full
    tail = cluster.cli("logs", str(inst["id"]), "--tail", "2").stdout
    assert tail.count("\n") == 2 and full.endswith(tail)

    follower = subprocess.Popen(
        [sys.executable, "-m", "gpufleet.cli.main", "logs", str(inst["id"]), "--follow", "--tail", "0"],
        env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(2)
        chat(inst["port"])  # the server logs the request
        time.sleep(1)
        cluster.cli("stop", "logged")  # the backend goes away: following ends
        out, err = follower.communicate(timeout=30)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    assert "chat/completions" in out or "launch_slot" in out or "slot" in out
    cluster.cli("rm", "logged")


def test_prefect_deployments_runs_and_typed_parameters(cluster: E2ECluster, tiny_gguf: Path) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    cluster.cli("deploy", "--name", "viaprefect", "--local-path", str(tiny_gguf), "--replicas", "0")
    with SyncPrefectClient(cluster.prefect_api_url) as client:
        names = {f"{client.read_flow(d.flow_id).name}/{d.name}" for d in client.read_deployments()}
        assert {"deploy/gpufleet", "scale/gpufleet", "stop/gpufleet", "start/gpufleet", "restart/gpufleet",
                "delete/gpufleet", "delete-instance/gpufleet", "serve-instances/gpufleet", "reconcile/gpufleet",
                "stop-instances/gpufleet", "edit/gpufleet"} <= names
        scale_dep = client.read_deployment_by_name("scale/gpufleet")
        props = scale_dep.parameter_openapi_schema["properties"]
        assert props["replicas"]["type"] == "integer" and props["replicas"]["minimum"] == 0

        # run the scale deployment through the Prefect API, as the UI would
        run = client.create_flow_run_from_deployment(scale_dep.id, parameters={"name": "viaprefect", "replicas": 2})
        final = wait_until(lambda: (s := client.read_flow_run(run.id).state) and s.is_final() and s,
                           timeout=120, what="scale flow run")
        assert final.is_completed(), final
        assert len(running(cluster.instances("viaprefect"))) == 2

        # typed parameters are enforced: a negative replica count is refused by Prefect
        try:
            client.create_flow_run_from_deployment(scale_dep.id, parameters={"name": "viaprefect", "replicas": -1})
        except Exception as exc:  # noqa: BLE001 - Prefect raises an HTTP 409/422 error
            assert "replicas" in str(exc) or "greater" in str(exc) or "minimum" in str(exc), exc
        else:
            raise AssertionError("Prefect accepted replicas=-1")

        # the CLI's operations are flow runs in Prefect too
        for flow_name in ("deploy", "scale", "serve-instances"):
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))
            assert any(r.state and r.state.is_completed() for r in runs), flow_name
    cluster.cli("rm", "viaprefect")


def test_node_loss_restart_readoption_and_backoff_restart(cluster: E2ECluster, tiny_gguf: Path) -> None:
    cluster.cli("deploy", "--name", "survivor", "--local-path", str(tiny_gguf), "--replicas", "2")
    a, b = cluster.instances("survivor")
    assert a["worker"] == b["worker"] == "node-b"
    node_b = next(c for c in cluster.children if c.name == "node-node-b")

    # the agent dies hard; its backends keep serving
    node_b.proc.send_signal(signal.SIGKILL)
    node_b.proc.wait()
    cluster.children.remove(node_b)
    assert pid_alive(a["pid"]) and pid_alive(b["pid"]) and chat(a["port"])

    # no heartbeats: the server marks the node's instances UNREACHABLE, saying why
    lost = wait_until(lambda: (i := cluster.instances("survivor")) and all(x["state"] == "UNREACHABLE" for x in i) and i,
                      timeout=30, what="UNREACHABLE")
    assert all("node-b stopped sending heartbeats" in x["state_message"] for x in lost)

    # while it is down the server forgets instance b (as if deleted elsewhere)
    httpx.delete(f"{cluster.api_url}/v1/internal/instances/{b['id']}", headers=cluster.headers).raise_for_status()

    cluster.start_node("node-b", virtual_gpus="T4-2.5G:1")
    # a is re-adopted: same process, RUNNING again; b's backend, now unknown, is stopped
    wait_until(lambda: not pid_alive(b["pid"]), timeout=30, what="orphan backend stopped")
    again = wait_until(lambda: next((i for i in cluster.instances("survivor") if i["state"] == "RUNNING"), None),
                       timeout=30, what="re-adopted RUNNING")
    assert (again["id"], again["pid"]) == (a["id"], a["pid"])

    # a backend that dies is reported as ERROR, saying where, with its last log lines ...
    os.kill(a["pid"], signal.SIGKILL)
    err = wait_until(lambda: next((i for i in cluster.api_instances("survivor") if i["state"] == "ERROR"), None),
                     timeout=30, interval=0.05, what="ERROR report")
    assert "exited unexpectedly" in err["state_message"] and "node-b" in err["state_message"]
    assert "listening on" in err["state_message"]  # the backend's own last log lines
    # ... and restarted at once (the first restart has no back-off) on the same placement
    t0 = time.monotonic()
    back = wait_until(lambda: next((i for i in cluster.instances("survivor")
                                    if i["state"] == "RUNNING" and i["restart_count"] == 1), None),
                      timeout=60, what="restart at once")
    assert time.monotonic() - t0 < 30  # no 10 s back-off before the first restart
    assert back["id"] == a["id"] and back["pid"] != a["pid"] and back["worker"] == "node-b"
    assert chat(back["port"])
    cluster.cli("rm", "survivor")
    assert cluster.instances() == []


def test_tasks_find_the_server_through_the_prefect_block(cluster: E2ECluster, monkeypatch) -> None:  # noqa: ANN001
    """A flow run by a non-gpufleet worker has no GPUFLEET_SERVER_URL nor key: it loads the block (URL, token)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from blocks.gpufleet_server import GpufleetServer
    from tasks import _connection

    monkeypatch.delenv("GPUFLEET_SERVER_URL", raising=False)
    monkeypatch.delenv("GPUFLEET_API_KEY", raising=False)
    monkeypatch.setenv("GPUFLEET_HOME", str(cluster.home / "elsewhere"))  # no credentials file either
    _connection._block.cache_clear()
    with temporary_settings(updates={PREFECT_API_URL: cluster.prefect_api_url}):
        GpufleetServer(url=cluster.api_url, token=cluster.api_key).save("default", overwrite=True)
        try:
            with _connection.connect() as c:
                assert c.base_url == cluster.api_url
                assert c.health()["status"] == "ok"
                c.list_deployments()  # authenticated with the block's token
        finally:
            _connection._block.cache_clear()


def test_model_missing_on_worker_is_an_error_naming_worker_and_path(
    cluster: E2ECluster, tiny_gguf: Path, tmp_path: Path
) -> None:
    model = tmp_path / "vanishing.gguf"
    model.write_bytes(tiny_gguf.read_bytes())
    # restart on error off: the ERROR stays to be read (the test is about its message)
    cluster.cli("deploy", "--name", "vanishing", "--local-path", str(model), "--no-restart-on-error")
    model.unlink()  # gone from the worker after the deploy was accepted
    out = cluster.cli("scale", "vanishing", "2", check=False)
    assert out.returncode != 0
    failed = [i for i in cluster.instances("vanishing") if i["state"] == "ERROR"]
    assert failed, cluster.instances("vanishing")
    message = failed[0]["state_message"]
    assert f"model path {model} not found on worker {failed[0]['worker']}" in message
    assert message in out.stderr
    [ok] = [i for i in cluster.instances("vanishing") if i["state"] == "RUNNING"]
    assert chat(ok["port"])  # the existing replica is untouched
    cluster.cli("rm", "vanishing")


def test_path_the_server_cannot_see_deploys_and_errors_on_the_worker(cluster: E2ECluster) -> None:
    """Air-gapped sites copy models onto the GPU machines only: the server records the
    deployment with an unknown estimate; the worker that lacks the path says so."""
    missing = "/no/such/dir/model.gguf"
    out = cluster.cli("deploy", "--name", "unseen", "--local-path", missing, "--no-restart-on-error", check=False)
    assert "deployment unseen created" in out.stdout, out.stderr
    [dep] = [d for d in cluster.cli_json("ls") if d["name"] == "unseen"]
    assert dep["estimate"]["known"] is False
    assert f"model path {missing} not found on the gpufleet server" in dep["estimate"]["reason"]
    [inst] = cluster.instances("unseen")
    assert inst["state"] == "ERROR", inst
    assert f"model path {missing} not found on worker {inst['worker']}" in inst["state_message"]
    assert out.returncode != 0 and inst["state_message"] in out.stderr
    cluster.cli("rm", "unseen")
    assert not [i for i in cluster.instances() if i["deployment"] == "unseen"]
