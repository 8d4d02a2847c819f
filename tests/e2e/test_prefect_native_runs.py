"""Long runs behave as Prefect users expect (issue 18): a deploy run cancelled mid-way ends
Cancelled and leaves the deployment consistent; a node that dies mid-run leaves no run
Running (gpufleet sets it Crashed, long before Prefect's zombie detection)."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.e2e.conftest import HUB_TOKEN, E2ECluster, pid_alive, wait_until
from tests.e2e.prefect_support import final_run_named, prefect_client, runs_named
from tests.support.fake_hub import FakeHub


def slow_repo(hub: FakeHub, tiny_gguf: Path, repo: str, seconds: float) -> None:
    hub.add_repo(repo, {"m-F32.gguf": tiny_gguf.read_bytes()}, token=HUB_TOKEN)
    hub.bytes_per_second = tiny_gguf.stat().st_size / seconds


def test_a_deploy_run_cancelled_mid_way(cluster: E2ECluster, e2e_hub: FakeHub, tiny_gguf: Path) -> None:
    from prefect.states import Cancelling

    slow_repo(e2e_hub, tiny_gguf, "org/cancel-GGUF", 12)
    try:
        cluster.cli("deploy", "--name", "cancelme", "--hf", "org/cancel-GGUF", "--file", "*F32*", "--no-wait")
        wait_until(lambda: any(i["state"] == "DOWNLOADING" for i in cluster.api_instances("cancelme")),
                   timeout=60, what="the weights being pulled")
        [deploy] = runs_named(cluster, "deploy cancelme ×1")
        with prefect_client(cluster) as c:
            c.set_flow_run_state(deploy.id, Cancelling(message="cancelled from the test"), force=True)
        run = final_run_named(cluster, "deploy cancelme ×1", timeout=30)
        assert run.state.is_cancelled(), run.state
        assert "cancelled" in run.state.message and "controller converges the rest" in run.state.message
    finally:
        e2e_hub.bytes_per_second = None
    # consistent: what the database says runs, runs; the replica count is met
    insts = wait_until(lambda: [i for i in cluster.api_instances("cancelme") if i["state"] == "RUNNING"],
                       timeout=120, what="cancelme converged")
    assert len(insts) == 1 and pid_alive(insts[0]["pid"])
    cluster.cli("scale", "cancelme", "2")  # and it takes the next operation
    assert len([i for i in cluster.api_instances("cancelme") if i["state"] == "RUNNING"]) == 2
    cluster.cli("rm", "cancelme")


def test_a_node_dying_mid_run_leaves_no_run_running(cluster: E2ECluster, e2e_hub: FakeHub,
                                                    tiny_gguf: Path) -> None:
    node = cluster.start_node("node-doomed", labels={"pool": "doomed"})
    slow_repo(e2e_hub, tiny_gguf, "org/doomed-GGUF", 30)
    try:
        cluster.cli("deploy", "--name", "doomed", "--hf", "org/doomed-GGUF", "--file", "*F32*",
                    "--worker-selector", "pool=doomed", "--no-wait")
        [inst] = wait_until(lambda: [i for i in cluster.api_instances("doomed") if i["state"] == "DOWNLOADING"],
                            timeout=60, what="the weights being pulled on node-doomed")
        serve = f"serve-instances node-doomed: {inst['id']}"
        wait_until(lambda: [r for r in runs_named(cluster, serve) if r.state.is_running()], what="serve running")
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)
        run = final_run_named(cluster, serve, timeout=60)  # worker timeout 5 s + a controller round
        assert run.state.is_crashed(), run.state
        assert "node-doomed stopped heartbeating" in run.state.message
    finally:
        e2e_hub.bytes_per_second = None
        cluster.children.remove(node)
    # the node comes back (its instances are re-adopted or stopped), then everything goes
    back = cluster.start_node("node-doomed", labels={"pool": "doomed"})
    cluster.cli("rm", "doomed")
    back.proc.terminate()
    back.proc.wait(30)
    cluster.children.remove(back)
    cluster.cli("workers", "rm", "node-doomed", "--force")
