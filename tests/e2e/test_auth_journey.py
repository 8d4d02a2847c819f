"""Authentication end to end on the session's real cluster (Prefect, gpufleet server, nodes
that joined with the join token, real llama.cpp processes): roles through the CLI, a revoked
key, a forged state report and a fake 1 TiB worker refused, a node's logs refusing an
unauthenticated call, a backend started without the node's secrets, and a secret variable
that reaches the backend but is masked in the API, the CLI, Prefect's run parameters and the log."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gpufleet.cli.embedded import Child, _spawn, _wait_for_worker, stop_children
from tests.e2e.conftest import E2ECluster, chat

NODE_SECRET = "hf_NODE_ONLY_SECRET_token"
DEPLOY_SECRET = "deployment-SECRET-value-42"


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


@pytest.fixture(scope="module")
def secret_node(cluster: E2ECluster) -> Iterator[Child]:
    """A node whose own environment holds a hub token, as an operator would set it for downloads."""
    args = [sys.executable, "-m", "gpufleet.cli.main", "node", "--name", "node-s", "--server", cluster.api_url,
            "--stop-backends-on-exit", "--label", "auth=journey"]
    env = {**cluster.env, "HF_TOKEN": NODE_SECRET}
    child = _spawn("node-node-s", args, env, cluster.home / "logs")
    try:
        _wait_for_worker(cluster.api_url, "node-s", child, 60, cluster.api_key)
        yield child
    finally:
        stop_children([child])


def test_the_cluster_runs_with_authentication_and_nodes_joined(cluster: E2ECluster) -> None:
    assert cluster.api_key and cluster.join_token
    assert httpx.get(f"{cluster.api_url}/v1/deployments").status_code == 401
    for node in ("node-a", "node-b"):
        creds = cluster.node_home(node) / "credentials.json"
        assert oct(creds.stat().st_mode & 0o777) == "0o600"
        assert json.loads(creds.read_text())["worker"] == node


def test_roles_scopes_and_revocation_through_the_cli(cluster: E2ECluster, tiny_gguf: Path) -> None:
    cluster.cli("deploy", "--name", "authz", "--local-path", str(tiny_gguf), "--replicas", "0")
    made = json.loads(cluster.cli("keys", "create", "--name", "app", "--models", "authz", "--json").stdout)
    ops = json.loads(cluster.cli("keys", "create", "--name", "ops", "--role", "operator", "--models", "authz",
                                 "--expires", "1d", "--json").stdout)
    as_app = {**cluster.env, "GPUFLEET_API_KEY": made["token"]}
    as_ops = {**cluster.env, "GPUFLEET_API_KEY": ops["token"]}
    listed = cluster.cli("keys", "ls").stdout
    assert f"gf_{made['prefix']}" in listed and made["token"] not in listed and ops["token"] not in listed

    def run(env: dict[str, str], *args: str):  # noqa: ANN202
        import subprocess

        return subprocess.run([sys.executable, "-m", "gpufleet.cli.main", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    denied = run(as_app, "ls")
    assert denied.returncode == 1 and "inference keys call the OpenAI-compatible routes only" in denied.stderr
    assert run(as_ops, "scale", "authz", "0", "--no-wait").returncode == 0
    other = run(as_ops, "deploy", "--name", "notmine", "--local-path", str(tiny_gguf), "--replicas", "0")
    assert other.returncode == 1 and "may not operate deployment 'notmine'" in other.stderr
    loader = run(as_ops, "edit", "authz", "--env", "LD_PRELOAD=/tmp/x.so")
    assert loader.returncode == 1 and "only an admin may set LD_PRELOAD" in loader.stderr
    assert run(as_ops, "keys", "ls").returncode == 1
    cluster.cli("keys", "rm", made["prefix"])
    gone = run(as_app, "ls")
    assert gone.returncode == 1 and "invalid, expired or revoked API key" in gone.stderr
    assert made["token"] not in gone.stderr
    cluster.cli("keys", "rm", "ops")
    cluster.cli("rm", "authz")


def test_forged_reports_fake_workers_and_unauthenticated_node_logs_are_refused(
        cluster: E2ECluster, tiny_gguf: Path) -> None:
    cluster.cli("deploy", "--name", "guarded", "--local-path", str(tiny_gguf))
    try:
        [inst] = [i for i in cluster.instances("guarded") if not i["deleting"]]
        assert inst["state"] == "RUNNING"
        api = cluster.api_url
        forged = {"reports": {str(inst["id"]): {"state": "ERROR", "message": "forged by curl"}}}
        assert httpx.put(f"{api}/v1/internal/instances/states", json=forged).status_code == 401
        fake = {"name": "huge", "address": "http://127.0.0.1:1", "cpu_count": 512, "memory_total": 1 << 40,
                "work_queue": "node-huge"}
        assert httpx.post(f"{api}/v1/workers", json=fake).status_code == 401
        assert "huge" not in [w["name"] for w in cluster.cli_json("workers")]
        # the node's own API: its logs answer the server's credential only
        [worker] = [w for w in cluster.cli_json("workers") if w["name"] == inst["worker"]]
        r = httpx.get(f"{worker['address']}/v1/instances/{inst['id']}/logs", params={"tail": 5})
        assert r.status_code == 401
        logs = cluster.cli("logs", str(inst["id"]), "--tail", "5")  # through the server, which has it
        assert logs.stdout.strip()
        [again] = [i for i in cluster.instances("guarded") if not i["deleting"]]
        assert again["state"] == "RUNNING" and "forged" not in again["state_message"]
    finally:
        cluster.cli("rm", "guarded")


def test_backend_gets_its_secret_but_not_the_nodes_and_the_secret_is_masked_everywhere(
        cluster: E2ECluster, secret_node: Child, tiny_gguf: Path) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.sorting import LogSort

    cluster.cli("deploy", "--name", "secretive", "--local-path", str(tiny_gguf), "--worker-selector", "auth=journey",
                "--env", "PLAIN_VAR=visible", "--secret-env", f"MY_API_SECRET={DEPLOY_SECRET}")
    try:
        [inst] = [i for i in cluster.instances("secretive") if not i["deleting"]]
        assert inst["state"] == "RUNNING" and inst["worker"] == "node-s"
        env = environ(inst["pid"])
        assert env["MY_API_SECRET"] == DEPLOY_SECRET and env["PLAIN_VAR"] == "visible"  # the backend has its own
        assert NODE_SECRET not in json.dumps(env) and "HF_TOKEN" not in env  # not the node's
        assert "GPUFLEET_API_KEY" not in env and "GPUFLEET_JOIN_TOKEN" not in env
        chat(inst["port"])
        # masked: API, CLI, Prefect's run parameters, the backend's log header
        shown = [cluster.cli("ls", "--json").stdout, cluster.cli("ps", "secretive", "--json").stdout,
                 httpx.get(f"{cluster.api_url}/v1/deployments/secretive", headers=cluster.headers).text,
                 cluster.cli("logs", str(inst["id"])).stdout]
        assert all(DEPLOY_SECRET not in text for text in shown)
        assert '"MY_API_SECRET":"***"' in shown[0].replace(" ", "")
        with SyncPrefectClient(cluster.prefect_api_url) as client:
            runs = [r for r in client.read_flow_runs(limit=200) if "secretive" in json.dumps(r.parameters)]
            assert runs and all(DEPLOY_SECRET not in json.dumps(r.parameters) for r in runs)
            # nor in any flow or task run's log, nor any key
            logged = " ".join(entry.message for entry in client.read_logs(limit=200, sort=LogSort.TIMESTAMP_DESC))
            node_keys = [json.loads((cluster.node_home(n) / "credentials.json").read_text())["node_key"]
                         for n in ("node-a", "node-b", "node-s")]
            assert logged and DEPLOY_SECRET not in logged and "gf_" not in logged
            assert all(key not in logged for key in [cluster.api_key, *node_keys])
        edited = cluster.cli("edit", "secretive", "--env", "OTHER=1").stdout
        assert "environment merged" in edited and "MY_API_SECRET=***" in edited and "PLAIN_VAR=visible" in edited
        for log in (cluster.home / "logs").glob("*.log"):  # the server's and nodes' own logs
            text = log.read_text(errors="replace")
            assert DEPLOY_SECRET not in text and cluster.api_key not in text, log  # type: ignore[operator]
    finally:
        cluster.cli("rm", "secretive")


def test_up_no_auth_says_so_loudly_and_needs_no_key(tmp_path: Path) -> None:
    """A single-user laptop: `gpufleet up --no-auth` warns at start-up, writes no key, and its node
    registers without a join token."""
    import os
    import subprocess

    from tests.e2e.conftest import free_port, wait_until

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GPUFLEET_"))}
    env.update(GPUFLEET_HOME=str(tmp_path / "home"), GPUFLEET_RUNTIME="process", GPUFLEET_PREFECT_DATABASE="sqlite")
    port = free_port()
    log = tmp_path / "up.log"
    with log.open("w") as out:
        up = subprocess.Popen([sys.executable, "-m", "gpufleet.cli.main", "up", "--no-auth", "--port", str(port),
                               "--prefect-port", str(free_port()), "--node-name", "laptop"],
                              env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "gpufleet is up" in log.read_text() or up.poll() is not None, timeout=240, what="up")
        text = " ".join(log.read_text().split())
        assert up.poll() is None, text
        assert "authentication is OFF" in text and "single-user laptop" in text
        assert "authentication is OFF" in (tmp_path / "home" / "logs" / "server.log").read_text()
        [worker] = httpx.get(f"http://127.0.0.1:{port}/v1/workers", timeout=10).json()
        assert worker["name"] == "laptop" and worker["ready"]
        assert not (tmp_path / "home" / "credentials").exists()
        down = subprocess.run([sys.executable, "-m", "gpufleet.cli.main", "down"], env=env, capture_output=True,
                              text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.kill()


def test_a_revoked_node_credential_is_refused_and_the_node_joins_again(cluster: E2ECluster) -> None:
    """`keys rm` of a node's credential: its next heartbeat is refused, and the node (which still
    has the join token) joins again with a new credential and stays ready."""
    from tests.e2e.conftest import wait_until

    creds = cluster.node_home("node-b") / "credentials.json"
    before = json.loads(creds.read_text())["node_key"]
    cluster.cli("keys", "rm", "node:node-b")
    r = httpx.post(f"{cluster.api_url}/v1/workers/node-b/heartbeat", headers={"Authorization": f"Bearer {before}"})
    assert r.status_code == 401
    def current() -> str | None:
        try:  # the node removes the refused credential before it joins again
            return json.loads(creds.read_text())["node_key"]
        except FileNotFoundError:
            return None

    wait_until(lambda: current() not in (None, before), timeout=30, what="node-b joined again")
    wait_until(lambda: any(w["name"] == "node-b" and w["ready"] for w in cluster.cli_json("workers")),
               timeout=30, what="node-b ready")
    assert oct(creds.stat().st_mode & 0o777) == "0o600"
