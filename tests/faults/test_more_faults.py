"""More faults under the real cluster (tests/faults/conftest.py): a backend killed by the
kernel's OOM killer (a memory cgroup limit), each case asserting what the user sees and that
nothing was lost."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpufleet.node import oom
from tests.e2e.conftest import chat, wait_until
from tests.faults.conftest import FaultCluster
from tests.faults.test_faults import nothing_lost, running

pytestmark = [pytest.mark.faults]


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    """A child memory cgroup of this process's own (we are root); skipped where none can be made."""
    own = oom.memory_cgroup(os.getpid())
    if own is None:
        pytest.skip("no memory cgroup readable here")
    child = own / f"gpufleet-oom-{uuid.uuid4().hex[:8]}"
    try:
        child.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup under {own}: {exc}")
    try:
        yield child
    finally:
        for _ in range(50):
            try:
                child.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_backend_oom_killed_by_the_kernel_says_oom(faults_cluster: FaultCluster, tiny_gguf: Path,
                                                  memory_cgroup: Path, figures: dict[str, Any]) -> None:
    """The backend is moved into a memory cgroup whose limit it exceeds with its next pages: the
    kernel kills it (SIGKILL), supervision sees the cgroup's OOM-kill count grow and says OOM."""
    c = faults_cluster
    c.cli("deploy", "--name", "oomed", "--local-path", str(tiny_gguf))
    first = running(c, "oomed")
    time.sleep(1.5)  # one supervision round sees it alive in its cgroup; the next must see the move
    limit = "memory.max" if (memory_cgroup / "memory.max").exists() else "memory.limit_in_bytes"
    (memory_cgroup / limit).write_text(str(64 * 1024))
    (memory_cgroup / "cgroup.procs").write_text(str(first["pid"]))
    time.sleep(1.5)  # supervision notes the new cgroup and its count (0)
    t_kill = time.time()
    for _ in range(20):  # a request makes it touch new pages; the kernel kills it on the first ones
        try:
            httpx.post(f"http://127.0.0.1:{first['port']}/v1/chat/completions", timeout=2,
                       json={"messages": [{"role": "user", "content": "hello " * 200}], "max_tokens": 8})
        except httpx.HTTPError:
            pass
        if (oom.oom_kills(memory_cgroup) or 0) > 0:
            break
        time.sleep(0.1)
    assert (oom.oom_kills(memory_cgroup) or 0) > 0, "the kernel did not OOM-kill the backend"
    err = wait_until(lambda: next((i for i in c.api_instances("oomed") if i["state"] == "ERROR"), None),
                     timeout=10, interval=0.02, what="ERROR after the OOM kill")
    t_error = time.time()
    assert "OOM: killed by the kernel for running out of memory" in err["state_message"], err["state_message"]
    assert "killed by SIGKILL" in err["state_message"]
    back = running(c, "oomed", restart_count=1)  # restarted at once, outside that cgroup
    assert back["id"] == first["id"] and chat(back["port"])
    nothing_lost(c, "oomed", first["id"])
    figures["backend_oom_kill"] = {"kill_to_error_s": round(t_error - t_kill, 2),
                                   "message": err["state_message"].splitlines()[0][:200],
                                   "lost": "0 deployments, 0 instances, 0 log runs"}
    c.cli("rm", "oomed")


def restart_child(c: FaultCluster, name: str, sig: int, health: str, timeout: float = 120) -> float:
    """Stop a control-plane child with ``sig``, start it again and wait for ``health``; returns
    how long it was away."""
    child = next(ch for ch in c.children if ch.name == name)
    t0 = time.time()
    os.kill(child.proc.pid, sig)
    child.proc.wait(60)
    child.respawn()
    wait_until(lambda: _answers(health), timeout=timeout, interval=0.2, what=f"{name} back")
    return time.time() - t0


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def backends_of(c: FaultCluster, deployment: str) -> list[int]:
    """Pids of the processes listening on this deployment's instances' ports (a duplicate shows twice)."""
    from tests.faults.test_faults import servers_on_port

    return [pid for i in c.api_instances(deployment) if i["port"] for pid in servers_on_port(i["port"])]


def test_server_sigkill_during_a_deploy_of_5(faults_cluster: FaultCluster, tiny_gguf: Path,
                                            figures: dict[str, Any]) -> None:
    """The gpufleet server (which runs the deploy flow) dies mid-deploy; started again, it
    re-drives the deployment: all 5 end RUNNING, each once (no duplicate instance or process)."""
    import signal

    c = faults_cluster
    c.cli("deploy", "--name", "five", "--local-path", str(tiny_gguf), "--replicas", "5", "--no-wait")
    wait_until(lambda: any(i["state"] in ("SCHEDULED", "STARTING", "RUNNING") for i in c.api_instances("five")),
               timeout=60, interval=0.05, what="the deploy under way")
    t0 = time.time()
    away = restart_child(c, "server", signal.SIGKILL, f"{c.api_url}/v1/health")

    def five_running() -> list[dict[str, Any]] | None:
        live = c.api_instances("five")
        return live if len(live) == 5 and all(i["state"] == "RUNNING" for i in live) else None

    live = wait_until(five_running, timeout=240, interval=0.5, what="5 RUNNING after the server restart")
    t_done = time.time()
    assert len({i["id"] for i in live}) == 5 and len({(i["worker"], i["port"]) for i in live}) == 5
    time.sleep(2)  # a duplicate launch would show up now
    assert len(c.api_instances("five")) == 5
    assert sorted(backends_of(c, "five")) == sorted(i["pid"] for i in live)  # one process per instance
    assert [d["name"] for d in httpx.get(f"{c.api_url}/v1/deployments").json()].count("five") == 1
    figures["server_sigkill_during_deploy_of_5"] = {
        "server_away_s": round(away, 2), "kill_to_all_running_s": round(t_done - t0, 2),
        "instances": 5, "duplicates": 0, "lost": "0 deployments, 0 instances, 0 log runs"}
    c.cli("rm", "five")


def test_prefect_restart_during_a_scale(faults_cluster: FaultCluster, tiny_gguf: Path,
                                        figures: dict[str, Any]) -> None:
    """Prefect (runs, queues) restarts while a scale 1 → 3 runs: the running backend keeps
    serving throughout, and the deployment ends at 3 RUNNING, nothing lost."""
    import signal

    c = faults_cluster
    c.cli("deploy", "--name", "pscale", "--local-path", str(tiny_gguf))
    first = running(c, "pscale")
    c.cli("scale", "pscale", "3", "--no-wait")
    t0 = time.time()
    away = restart_child(c, "prefect", signal.SIGTERM, c.prefect_api_url + "/health", timeout=180)
    assert chat(first["port"])  # the backend served on while Prefect was away

    def three_running() -> list[dict[str, Any]] | None:
        live = c.api_instances("pscale")
        return live if len(live) == 3 and all(i["state"] == "RUNNING" for i in live) else None

    live = wait_until(three_running, timeout=240, interval=0.5, what="3 RUNNING after the Prefect restart")
    t_done = time.time()
    assert first["id"] in {i["id"] for i in live} and len(backends_of(c, "pscale")) == 3
    previous_logs = c.cli("logs", str(first["id"])).stdout
    assert "[gpufleet] starting on" in previous_logs  # its log run is still there
    figures["prefect_restart_during_scale"] = {
        "prefect_away_s": round(away, 2), "restart_to_3_running_s": round(t_done - t0, 2),
        "lost": "0 deployments, 0 instances, 0 log runs"}
    c.cli("rm", "pscale")
