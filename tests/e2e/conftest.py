"""One real cluster for the whole session: a Prefect server, the gpufleet server,
node-a (CPU only) and node-b (one declared 2.5 GiB GPU), all as real processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpufleet.cli import prefect_postgres
from gpufleet.cli.embedded import Child, _spawn, _wait_for_worker, start_cluster, stop_children
from tests.support.fake_hub import FakeHub


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class E2ECluster:
    api_url: str
    prefect_api_url: str
    home: Path
    env: dict[str, str]
    children: list[Child]
    #: the admin key the server created (<home>/credentials) and its join token for nodes
    api_key: str | None = None
    join_token: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def cli(self, *args: str, check: bool = True, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "gpufleet.cli.main", *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"gpufleet {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def instances(self, deployment: str | None = None) -> list[dict[str, Any]]:
        return self.cli_json("ps", *([deployment] if deployment else []))

    def api_instances(self, deployment: str | None = None) -> list[dict[str, Any]]:
        """What `ps --json` shows, straight from the REST API: fast enough to poll for a state
        that lasts a second (an ERROR whose first restart begins at once)."""
        params = {"deployment": deployment} if deployment else {}
        resp = httpx.get(f"{self.api_url}/v1/instances", params=params, timeout=10, headers=self.headers)
        resp.raise_for_status()
        return resp.json()

    def node_home(self, node: str) -> Path:
        return self.home / "nodes" / node

    def start_node(self, name: str, virtual_gpus: str | None = None, labels: dict[str, str] | None = None,
                   env: dict[str, str] | None = None) -> Child:
        args = [sys.executable, "-m", "gpufleet.cli.main", "node", "--name", name, "--server", self.api_url,
                "--stop-backends-on-exit"]
        if virtual_gpus:
            args += ["--virtual-gpus", virtual_gpus]
        for key, value in (labels or {}).items():
            args += ["--label", f"{key}={value}"]
        child = _spawn(f"node-{name}", args, {**self.env, **(env or {})}, self.home / "logs")
        _wait_for_worker(self.api_url, name, child, 60, self.api_key)
        self.children.append(child)
        return child


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ECluster]:
    home = tmp_path_factory.mktemp("gpufleet-home")
    saved = {k: os.environ.pop(k) for k in ("PREFECT_API_URL", "GPUFLEET_SERVER_URL") if k in os.environ}
    # Short heartbeats so that a lost node is noticed within seconds in the tests.
    fast = {"GPUFLEET_HEARTBEAT_INTERVAL": "1", "GPUFLEET_WORKER_TIMEOUT": "5",
            # these journeys check processes (/proc cmdlines, environments): their nodes run the process
            # runtime even where a Docker engine answers; the docker journey asks for --runtime docker
            "GPUFLEET_RUNTIME": "process"}
    saved.update({k: os.environ[k] for k in fast if k in os.environ})
    os.environ.update(fast)
    try:
        c = start_cluster(free_port(), free_port(), "node-a", None, home, log=lambda *_: None)
    finally:
        for k in fast:
            os.environ.pop(k, None)
        os.environ.update(saved)
    e2e = E2ECluster(c.api_url, c.prefect_api_url, home, authenticated_env(c), c.children, c.api_key, c.join_token)
    restore = use_key(c.api_key)
    try:
        e2e.start_node("node-b", virtual_gpus="T4-2.5G:1")
        yield e2e
    finally:
        restore()
        stop_children(e2e.children)
        stop_leftover_backends(home)
        prefect_postgres.discard(home)


def authenticated_env(c) -> dict[str, str]:  # noqa: ANN001 - gpufleet.cli.embedded.Cluster
    """The environment of the tests' CLI calls and extra nodes: the cluster's admin key (the CLI
    would also read it from <home>/credentials) and its join token (nodes started by tests join
    with it; a node ignores an inherited user key and uses its own credential)."""
    env = dict(c.env)
    if c.api_key:
        env["GPUFLEET_API_KEY"] = c.api_key
    if c.join_token:
        env["GPUFLEET_JOIN_TOKEN"] = c.join_token
    return env


def use_key(api_key: str | None):  # noqa: ANN201
    """This test process's clients (GpufleetClient, the tasks a test runs in-process) use the
    cluster's admin key; returns the undo."""
    saved = os.environ.get("GPUFLEET_API_KEY")
    if api_key:
        os.environ["GPUFLEET_API_KEY"] = api_key

    def restore() -> None:
        if saved is None:
            os.environ.pop("GPUFLEET_API_KEY", None)
        else:
            os.environ["GPUFLEET_API_KEY"] = saved
    return restore


#: The token the hub stand-in's gated repositories want; it must never show in output or states.
HUB_TOKEN = "hf_e2e_SECRET_token"


@pytest.fixture(scope="session")
def e2e_hub(cluster: E2ECluster) -> Iterator[FakeHub]:
    """One hub stand-in for the session, its endpoint and token saved in the Prefect block
    `hub-credentials` that the server and the nodes read. One for all the hub journeys: the
    processes cache the block for a minute, so a second stand-in (another port) saved later
    would be ignored by them until that minute is over."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from blocks.hub_credentials import HubCredentials

    hub = FakeHub().start()
    with temporary_settings(updates={PREFECT_API_URL: cluster.prefect_api_url}):
        HubCredentials(huggingface_endpoint=hub.url, huggingface_token=HUB_TOKEN).save("default", overwrite=True)
        try:
            yield hub
        finally:
            HubCredentials.delete("default")
            hub.stop()


def stop_leftover_backends(home: Path) -> None:
    """A failed test may leave a node killed mid-way: stop whatever its registry still lists."""
    from gpufleet.node import processes
    from gpufleet.node.registry import BackendRegistry

    for backends_dir in home.glob("nodes/*/backends"):
        for record in BackendRegistry(backends_dir).all():
            processes.terminate(record.pid, record.start_time, grace=2)


def wait_until(predicate, timeout: float = 60, interval: float = 0.2, what: str = "condition"):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


def chat(port: int) -> str:
    resp = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    content = resp.json()["choices"][0]["message"]["content"]
    assert isinstance(content, str)
    return content


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
