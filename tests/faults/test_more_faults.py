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
    assert [d["name"] for d in httpx.get(f"{c.api_url}/v1/deployments", headers=c.headers).json()].count("five") == 1
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


def test_50_concurrent_scale_deploy_delete_calls(faults_cluster: FaultCluster, tiny_gguf: Path,
                                                figures: dict[str, Any]) -> None:
    """40 scales of one deployment (shuffled issue times), 5 deploys and 5 deletes, all at
    once on a node with two 1 GiB virtual GPUs: the count ends at the latest-issued scale's,
    the deploys exist, the deleted are gone, and no GPU holds more claims than it has memory."""
    import random
    from concurrent.futures import ThreadPoolExecutor
    from datetime import datetime, timedelta, timezone

    from gpufleet.client import ApiError, GpufleetClient
    from gpufleet.core.placement_spec import PlacementSpec
    from gpufleet.core.schemas import DeploymentSpec, ModelSource

    c = faults_cluster
    node = c.start_node("fg", virtual_gpus="T4-1G:2", labels={"pool": "storm"})
    sel = ["--worker-selector", "pool=storm"]
    c.cli("deploy", "--name", "storm", "--local-path", str(tiny_gguf), *sel)
    for i in range(5):
        c.cli("deploy", "--name", f"sd-{i}", "--local-path", str(tiny_gguf), "--replicas", "0", *sel)
    rng = random.Random(13)
    base = datetime.now(timezone.utc)
    scales = [(base + timedelta(milliseconds=10 * k), rng.randint(0, 6)) for k in range(40)]
    last_count = scales[-1][1]
    spec = lambda name: DeploymentSpec(name=name, source=ModelSource(local_path=str(tiny_gguf)),  # noqa: E731
                                       replicas=1, placement=PlacementSpec(worker_selector=["pool=storm"]))
    calls = ([("scale", when, n) for when, n in scales] + [("deploy", None, f"sn-{i}") for i in range(5)]
             + [("delete", None, f"sd-{i}") for i in range(5)])
    rng.shuffle(calls)

    def call(item: tuple[str, Any, Any]) -> str:
        op, when, arg = item
        with GpufleetClient(c.api_url, timeout=120, retries=3) as api:
            try:
                if op == "scale":
                    api.scale("storm", arg, issued_at=when)
                elif op == "deploy":
                    api.create_deployment(spec(arg))
                else:
                    api.delete_deployment(arg)
            except ApiError as exc:
                return f"{op} {exc.status}"
        return f"{op} ok"

    t0 = time.time()
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(call, calls))
    t_answered = time.time()
    assert all(a.endswith(" ok") or a == "scale 412" for a in answers), answers

    def settled() -> bool:
        names = {d["name"] for d in httpx.get(f"{c.api_url}/v1/deployments", headers=c.headers).json()}
        if names & {f"sd-{i}" for i in range(5)} or not {f"sn-{i}" for i in range(5)} <= names:
            return False
        live = [i for i in c.api_instances("storm") if not i["deleting"]]
        return len(live) == last_count and all(i["state"] in ("RUNNING", "PENDING") for i in live)

    wait_until(settled, timeout=300, interval=1, what=f"storm at {last_count}, deploys and deletes applied")
    t_settled = time.time()
    assert httpx.get(f"{c.api_url}/v1/deployments/storm", headers=c.headers).json()["replicas"] == last_count
    # no over-committed GPU: Σ claims per GPU of fg ≤ its memory
    workers = {w["name"]: w for w in httpx.get(f"{c.api_url}/v1/workers", headers=c.headers).json()}
    claims: dict[int, int] = {}
    for inst in c.api_instances():
        placement = inst.get("placement") or {}
        if inst["worker"] == "fg":
            for gpu, size in (placement.get("vram_claim") or {}).items():
                claims[int(gpu)] = claims.get(int(gpu), 0) + size
    for gpu in workers["fg"]["gpus"]:
        assert claims.get(gpu["index"], 0) <= gpu["memory_total"], (gpu, claims)
    figures["concurrent_50_calls"] = {
        "answered_s": round(t_answered - t0, 2), "settled_s": round(t_settled - t0, 2),
        "refused_as_late_412": sum(a == "scale 412" for a in answers), "final_replicas": last_count,
        "fg_vram_claimed_mib": {g: round(v / 2**20) for g, v in claims.items()},
        "lost": "0 deployments, 0 instances, 0 log runs"}
    for name in ["storm", *(f"sn-{i}" for i in range(5))]:
        c.cli("rm", name, "--no-wait")
    wait_until(lambda: not [d for d in httpx.get(f"{c.api_url}/v1/deployments", headers=c.headers).json()
                            if d["name"] == "storm" or d["name"].startswith("sn-")], timeout=120, what="cleaned up")
    node.proc.terminate()
    node.proc.wait(30)
    c.children.remove(node)
    c.cli("workers", "rm", "fg", "--force")


def test_disk_full_while_pulling_weights(faults_cluster: FaultCluster, faults_hub: Any, tiny_gguf: Path,
                                         tmp_path: Path, figures: dict[str, Any]) -> None:
    """A node whose model cache is a 256 KiB tmpfs pulls a 514 KiB model: the instance is ERROR
    saying the cache has no room (and where), the cache holds nothing half-written."""
    import subprocess

    c = faults_cluster
    faults_hub.add_repo("org/full-GGUF", {"full-F32.gguf": tiny_gguf.read_bytes()})
    cache = tmp_path / "cache"
    cache.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(cache)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    node = c.start_node("fd", labels={"pool": "disk"}, env={"GPUFLEET_MODEL_CACHE": str(cache)})
    try:
        c.cli("deploy", "--name", "full", "--hf", "org/full-GGUF", "--worker-selector", "pool=disk",
              "--no-restart-on-error", "--no-wait")
        t0 = time.time()
        err = wait_until(lambda: next((i for i in c.api_instances("full") if i["state"] == "ERROR"), None),
                         timeout=120, interval=0.1, what="ERROR for a full cache")
        t_error = time.time()
        assert "not enough disk space in the model cache" in err["state_message"], err["state_message"]
        assert str(cache) in err["state_message"] and "fd" in err["state_message"]
        assert not [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
        assert [i["id"] for i in c.api_instances("full")] == [err["id"]]  # nothing lost, nothing doubled
        figures["disk_full_while_pulling"] = {"deploy_to_error_s": round(t_error - t0, 2),
                                              "message": err["state_message"].splitlines()[0][:200],
                                              "half_written_files": 0,
                                              "lost": "0 deployments, 0 instances, 0 log runs"}
        c.cli("rm", "full")
    finally:
        node.proc.terminate()
        node.proc.wait(30)
        c.children.remove(node)
        c.cli("workers", "rm", "fd", "--force", check=False)
        subprocess.run(["umount", "-l", str(cache)], check=False)


def test_hub_drops_the_connection_mid_download(faults_cluster: FaultCluster, faults_hub: Any, tiny_gguf: Path,
                                               figures: dict[str, Any]) -> None:
    """Once: the download resumes from where it was cut (a Range request) and the instance runs.
    Every time: ERROR saying the download failed and how much is kept; once the hub is back,
    the restart resumes it and the instance runs."""
    c = faults_cluster
    body = tiny_gguf.read_bytes()
    faults_hub.add_repo("org/drop-GGUF", {"drop-F32.gguf": body})
    faults_hub.fail("drop-F32.gguf", times=1, status=0, after_bytes=200_000, whole_only=True)
    t0 = time.time()
    c.cli("deploy", "--name", "dropped", "--hf", "org/drop-GGUF")
    first = running(c, "dropped")
    t_running = time.time()
    gets = [r for r in faults_hub.requests("GET", "drop-F32.gguf") if "/resolve/" in r.path]
    assert any(r.range is None and r.body_bytes == 200_000 for r in gets), gets
    assert any(r.range == "bytes=200000-" for r in gets), gets  # resumed, not started over
    assert chat(first["port"])
    run_log = c.cli("logs", str(first["id"])).stdout  # the run log starts with the download's lines
    assert "[gpufleet] DOWNLOADING 100 %" in run_log and f"[gpufleet] weights ready on {first['worker']}" in run_log
    c.cli("rm", "dropped")

    faults_hub.add_repo("org/gone-GGUF", {"gone-F32.gguf": body})
    c.cli("deploy", "--name", "gone", "--hf", "org/gone-GGUF", "--no-wait")  # the header was read: the hub is fine
    faults_hub.fail("gone-F32.gguf", times=1000, status=0, after_bytes=0)  # now every download is cut at once
    err = wait_until(lambda: next((i for i in c.api_instances("gone") if i["state"] == "ERROR"), None),
                     timeout=120, interval=0.1, what="ERROR after repeated drops")
    assert "download failed after 6 attempts" in err["state_message"], err["state_message"]
    assert "kept for resuming" in err["state_message"]
    faults_hub.faults.clear()
    try:  # its restart pulls again (STARTING with the download's progress) and runs
        back = running(c, "gone", timeout=120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the instance: {c.api_instances('gone')}") from None
    assert back["id"] == err["id"] and chat(back["port"])
    figures["hub_drops_connection"] = {"deploy_to_running_with_one_drop_s": round(t_running - t0, 2),
                                       "resumed_from_byte": 200_000,
                                       "every_download_cut": err["state_message"].splitlines()[0][:160],
                                       "lost": "0 deployments, 0 instances, 0 log runs"}
    c.cli("rm", "gone")
