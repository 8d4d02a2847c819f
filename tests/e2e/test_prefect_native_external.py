"""gpufleet on a Prefect server the user already runs (issue 18): a PostgreSQL-backed Prefect
server started here, `gpufleet up`'s cluster pointed at it with PREFECT_API_URL. gpufleet
registers its work pool, queues and deployments there; `prefect deploy --all` from the
repository root registers the same deployments (keeping their schedules); a scale run
started from that server's API works; stopping gpufleet leaves the Prefect server alone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gpufleet.cli.embedded import Child, _spawn, _wait_http, start_cluster, stop_children
from gpufleet.orchestration import REPO_ROOT, declared_deployments
from tests.e2e.conftest import E2ECluster, authenticated_env, free_port, stop_leftover_backends, wait_until
from tests.e2e.prefect_support import fire_schedules, prefect_client
from tests.support.postgres import temporary_postgres


@pytest.fixture(scope="module")
def user_prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The user's own Prefect server, on PostgreSQL; gpufleet did not start it."""
    home = tmp_path_factory.mktemp("user-prefect")
    with temporary_postgres() as url:
        port = free_port()
        env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_API_DATABASE_CONNECTION_URL": url.replace("+psycopg2", "+asyncpg")}
        env.pop("PREFECT_API_URL", None)
        child = _spawn("user-prefect", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                        "--port", str(port)], env, home)
        try:
            _wait_http(f"http://127.0.0.1:{port}/api/health", child, 120)
            yield f"http://127.0.0.1:{port}/api"
        finally:
            stop_children([child])


def test_gpufleet_on_a_prefect_server_the_user_runs(user_prefect: str, tmp_path: Path, tiny_gguf: Path) -> None:
    home = tmp_path / "home"
    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = user_prefect
    try:
        c = start_cluster(free_port(), free_port(), "node-x", None, home, log=lambda *_: None)
    finally:
        os.environ.pop("PREFECT_API_URL")
        if saved is not None:
            os.environ["PREFECT_API_URL"] = saved
    cluster = E2ECluster(c.api_url, user_prefect, home, authenticated_env(c), c.children, c.api_key, c.join_token)
    assert not any(ch.name == "prefect" for ch in c.children), "gpufleet must not start its own Prefect server"
    try:
        from prefect.client.schemas.filters import DeploymentFilter

        wanted = {f"{d.load_flow().name}/{d.name}" for d in declared_deployments()}
        with prefect_client(cluster) as p:
            assert p.read_work_pool("gpufleet").type == "gpufleet"
            # the node's worker makes its queue as it starts polling, just after it registers
            wait_until(lambda: {"control", "node-node-x"} <= {q.name for q in p.read_work_queues(
                work_pool_name="gpufleet")}, timeout=30, what="the control and node-node-x queues")
            deps = p.read_deployments(deployment_filter=DeploymentFilter())
            registered = {f"{p.read_flow(d.flow_id).name}/{d.name}" for d in deps}
        assert wanted <= registered

        # a model, a schedule rule, then `prefect deploy --all` from the repository root
        cluster.cli("deploy", "--name", "ext", "--local-path", str(tiny_gguf), "--replicas", "1")
        rule = cluster.cli_json("schedule", "add", "ext", "--cron", "0 8 * * 1-5", "--replicas", "2",
                                "--timezone", "Europe/Paris")
        deploy_env = {**c.env, "GPUFLEET_REPO": str(REPO_ROOT), "PYTHONPATH": str(REPO_ROOT)}
        out = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], cwd=REPO_ROOT,
                             env=deploy_env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        with prefect_client(cluster) as p:
            deps = p.read_deployments(deployment_filter=DeploymentFilter())
            after = {f"{p.read_flow(d.flow_id).name}/{d.name}" for d in deps}
        assert after == registered, "prefect deploy --all registers the same deployments"
        rules = cluster.cli_json("schedule", "ls", "ext")
        assert [r["id"] for r in rules] == [rule["id"]], "prefect deploy --all keeps the schedules"

        # a scale run started from that server's API (what its UI's Run form does)
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: user_prefect}):
            run = run_deployment("scale/gpufleet", parameters={"name": "ext", "replicas": 2}, timeout=120)
        assert run.state.is_completed(), run.state
        assert run.name == "scale ext → 2"
        assert len([i for i in cluster.api_instances("ext") if i["state"] == "RUNNING"]) == 2
        [current] = cluster.cli_json("schedule", "ls", "ext")
        fired = fire_schedules(cluster, "scale/gpufleet", {"name": "ext", "replicas": 2})
        assert fired.state.is_completed(), fired.state
        cluster.cli("schedule", "rm", current["id"])

        # a control run the gpufleet server process was running when it went away ends Crashed at
        # the next server's first controller round, not Running until Prefect's zombie detection
        from prefect.states import Running

        with prefect_client(cluster) as p:
            dep = p.read_deployment_by_name("reconcile/gpufleet")
            orphan = p.create_flow_run_from_deployment(dep.id, parameters={"name": "ext"})
            p.set_flow_run_state(orphan.id, Running(), force=True)
        [server] = [ch for ch in cluster.children if ch.name == "server"]
        server.proc.kill()
        server.proc.wait(30)
        server.respawn()
        _wait_http(f"{cluster.api_url}/v1/health", server, 120)

        def ended() -> object:
            with prefect_client(cluster) as p:
                run = p.read_flow_run(orphan.id)
            return run if run.state.is_final() else None

        run = wait_until(ended, timeout=30, what="the orphaned control run to end")
        assert run.state.is_crashed() and "interrupted by a gpufleet server restart" in run.state.message
        cluster.cli("rm", "ext")
    finally:
        stop_children(cluster.children)
        stop_leftover_backends(home)
    # nothing assumed gpufleet started Prefect: the user's server is still there
    assert httpx.get(f"{user_prefect}/health", timeout=10).status_code == 200
