"""Long runs behave as Prefect users expect (issue 18): a deploy run cancelled mid-way ends
Cancelled and leaves the deployment consistent; a node that dies mid-run leaves no run
Running (gpufleet sets it Crashed, long before Prefect's zombie detection)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.e2e.conftest import HUB_TOKEN, E2ECluster, pid_alive, wait_until
from tests.e2e.prefect_support import final_run_named, prefect_client, runs_named
from tests.support import fake_hub
from tests.support.fake_hub import FakeHub


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub stand-in throttles between chunks; the tiny model is under one 1 MiB chunk."""
    monkeypatch.setattr(fake_hub, "CHUNK", 16 << 10)


def slow_pull(cluster: E2ECluster, hub: FakeHub, tiny_gguf: Path, name: str, seconds: float, *args: str) -> None:
    """Deploy ``name`` from the hub stand-in, whose bodies are throttled once the server has read
    the model's header (the deploy request), so that the node's pull takes about ``seconds``."""
    hub.add_repo(f"org/{name}-GGUF", {"m-F32.gguf": tiny_gguf.read_bytes()}, token=HUB_TOKEN)
    cluster.cli("deploy", "--name", name, "--hf", f"org/{name}-GGUF", "--file", "*F32*", *args, "--no-wait")
    hub.bytes_per_second = tiny_gguf.stat().st_size / seconds


def test_a_deploy_run_cancelled_mid_way(cluster: E2ECluster, e2e_hub: FakeHub, tiny_gguf: Path) -> None:
    from prefect.states import Cancelling

    try:
        slow_pull(cluster, e2e_hub, tiny_gguf, "cancelme", 12)
        [inst] = wait_until(lambda: [i for i in cluster.api_instances("cancelme") if i["worker"]], timeout=60,
                            what="cancelme placed")
        serve = f"serve-instances {inst['worker']}: {inst['id']}"
        wait_until(lambda: [r for r in runs_named(cluster, serve) if r.state.is_running()], timeout=60,
                   what="its node run pulling the weights (12 s)")
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

    # cancelled while it waits for its deployment's scale slot (held here): the first step Prefect
    # refuses to a Cancelling run ends it Cancelled, not stuck in Cancelling
    from prefect.concurrency.sync import concurrency
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows._serial import ensure_limit, limit_name

    with temporary_settings(updates={PREFECT_API_URL: cluster.prefect_api_url}):
        ensure_limit(limit_name("cancelme"))
        with concurrency(limit_name("cancelme"), occupy=1, lease_duration=60, strict=True):
            cluster.cli("scale", "cancelme", "3", "--no-wait")
            [waiting] = wait_until(lambda: [r for r in runs_named(cluster, "scale cancelme → 3")
                                            if r.state.is_running()], what="the scale run waiting for its slot")
            with prefect_client(cluster) as c:
                c.set_flow_run_state(waiting.id, Cancelling(message="cancelled from the test"), force=True)
    run = final_run_named(cluster, "scale cancelme → 3", timeout=60)
    assert run.state.is_cancelled(), run.state
    cluster.cli("scale", "cancelme", "2")  # and it takes the next operation
    assert len([i for i in cluster.api_instances("cancelme") if i["state"] == "RUNNING"]) == 2
    cluster.cli("rm", "cancelme")


def test_a_node_dying_mid_run_leaves_no_run_running(cluster: E2ECluster, e2e_hub: FakeHub,
                                                    tiny_gguf: Path) -> None:
    node = cluster.start_node("node-doomed", labels={"pool": "doomed"})
    try:
        slow_pull(cluster, e2e_hub, tiny_gguf, "doomed", 30, "--worker-selector", "pool=doomed")
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


def test_a_serve_run_sent_to_a_node_lost_before_it_began_ends_and_the_deploy_goes_on(
        cluster: E2ECluster, tiny_gguf: Path) -> None:
    """The node is frozen (SIGSTOP: no heartbeats, no polling of its queue) just before the
    deploy; the placement still sees it ready (it times out after 5 s here), so the serve run goes
    to a queue nobody reads. Once the node is taken for lost, that run ends Cancelled (it never
    began), the deploy run finishes instead of waiting out its timeout, and the instance, placed
    again when the node comes back, runs once, there."""
    node = cluster.start_node("node-frozen", labels={"pool": "frozen"})
    try:
        node.proc.send_signal(signal.SIGSTOP)
        cluster.cli("deploy", "--name", "frozen", "--local-path", str(tiny_gguf), "--worker-selector",
                    "pool=frozen", "--no-wait")
        [inst] = wait_until(lambda: [i for i in cluster.api_instances("frozen") if i["worker"] == "node-frozen"],
                            timeout=30, what="frozen placed on node-frozen")
        serve = final_run_named(cluster, f"serve-instances node-frozen: {inst['id']}", timeout=60)
        assert serve.state.is_cancelled(), serve.state
        assert "node-frozen stopped heartbeating" in serve.state.message and "had not begun" in serve.state.message
        deploy = final_run_named(cluster, "deploy frozen ×1", timeout=60)
        assert deploy.state.is_completed(), deploy.state
        [pending] = cluster.api_instances("frozen")
        assert pending["state"] == "PENDING" and "node-frozen" in pending["state_message"]

        node.proc.send_signal(signal.SIGCONT)
        [back] = wait_until(lambda: [i for i in cluster.api_instances("frozen") if i["state"] == "RUNNING"],
                            timeout=120, what="frozen RUNNING once node-frozen is back")
        assert back["worker"] == "node-frozen"
        assert len(cluster.api_instances("frozen")) == 1
    finally:
        node.proc.send_signal(signal.SIGCONT)
        cluster.cli("rm", "frozen", check=False)
        node.proc.terminate()
        node.proc.wait(30)
        cluster.children.remove(node)
        cluster.cli("workers", "rm", "node-frozen", "--force", check=False)
