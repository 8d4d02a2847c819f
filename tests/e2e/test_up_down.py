"""Journey 1, the README's main job: `gpufleet up --demo` brings up a one-machine
cluster with a tiny model answering; `gpufleet down` stops all of it, backends included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from gpufleet import credentials
from gpufleet.cli import prefect_postgres
from tests.e2e.conftest import chat, free_port, pid_alive, wait_until


def test_up_demo_then_down_stops_everything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GPUFLEET_"))}
    env["GPUFLEET_HOME"] = str(tmp_path / "home")
    # the process runtime even where the docker tests started a Docker engine: with no registry
    # here, a docker node could not pull llama.cpp's image (test_docker_journey covers containers)
    env["GPUFLEET_RUNTIME"] = "process"
    port, prefect_port = free_port(), free_port()
    log = tmp_path / "up.log"
    with log.open("w") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "gpufleet.cli.main", "up", "--demo", "--port", str(port),
             "--prefect-port", str(prefect_port), "--node-name", "local"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "is answering" in log.read_text() or up.poll() is not None, timeout=240,
                   what="demo answering")
        text = log.read_text()
        assert up.poll() is None, text
        assert f"gpufleet API: http://127.0.0.1:{port}" in text
        assert f"web page:     http://127.0.0.1:{port}/" in text
        assert "<title>gpufleet</title>" in httpx.get(f"http://127.0.0.1:{port}/").text
        assert f"Prefect UI:   http://127.0.0.1:{prefect_port}" in text
        # Prefect on the embedded PostgreSQL (see gpufleet/cli/prefect_postgres.py), not on SQLite
        assert "starting PostgreSQL for Prefect on 127.0.0.1:" in text, text
        pg_port = int(text.split("starting PostgreSQL for Prefect on 127.0.0.1:")[1].split()[0])
        assert prefect_database_pid(tmp_path / "home") is not None
        # authentication on by default: the first admin key is shown once, kept 0600 in the home
        creds = tmp_path / "home" / "credentials"
        assert oct(creds.stat().st_mode & 0o777) == "0o600"
        key = credentials.read_private_json(creds)["api_key"]  # type: ignore[index]
        assert f"admin API key (shown once): {key}" in text and text.count(key) == 1
        assert key not in (tmp_path / "home" / "logs" / "server.log").read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/v1/instances").status_code == 401
        [inst] = httpx.get(f"http://127.0.0.1:{port}/v1/instances", headers=_auth(tmp_path / "home")).json()
        assert inst["state"] == "RUNNING" and pid_alive(inst["pid"])

        down = subprocess.run([sys.executable, "-m", "gpufleet.cli.main", "down"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.kill()
    assert not pid_alive(inst["pid"])  # the backend went with it
    for p in (port, prefect_port):
        try:
            httpx.get(f"http://127.0.0.1:{p}/", timeout=1)
        except httpx.TransportError:
            continue
        raise AssertionError(f"something still listens on port {p}")
    assert not (tmp_path / "home" / "up.json").exists()
    try:
        httpx.get(f"http://127.0.0.1:{pg_port}/", timeout=1)
    except httpx.TransportError:
        pass
    else:
        raise AssertionError("Prefect's PostgreSQL still listens")
    assert prefect_database_pid(tmp_path / "home") is None  # stopped cleanly: no postmaster.pid left
    prefect_postgres.discard(tmp_path / "home")


def _auth(home: Path) -> dict[str, str]:
    """The admin key `up` left in the home (what the CLI of that home uses)."""
    key = (credentials.read_private_json(home / "credentials") or {})["api_key"]
    return {"Authorization": f"Bearer {key}"}


def prefect_database_pid(home: Path) -> int | None:
    """The embedded PostgreSQL's postmaster.pid (its data is in the home, or outside it as root)."""
    data = prefect_postgres.root_data_dir(home) / "data" if os.geteuid() == 0 else home / "prefect" / "postgres" / "data"
    try:
        return int((data / "postmaster.pid").read_text().split()[0])
    except FileNotFoundError:
        return None


def _children(pid: int) -> dict[str, int]:
    """`gpufleet up`'s child processes by role (node, server, prefect), from /proc."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            args = (proc / "cmdline").read_bytes().decode().split("\0")
        except (OSError, ValueError):
            continue
        if ppid != pid:
            continue
        for role in ("node", "server"):
            if "gpufleet.cli.main" in args and role in args:
                found[role] = int(proc.name)
    return found


def test_up_refuses_a_second_cluster_and_restarts_a_dead_part_keeping_backends(tmp_path: Path) -> None:
    """Issue 17: a second `up` of the same home or ports is refused, naming the first and
    touching nothing of it; a node or server that dies is restarted and the backend keeps
    serving throughout; `down` still finds the first `up`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GPUFLEET_"))}
    env.update(GPUFLEET_HOME=str(tmp_path / "home"), GPUFLEET_RUNTIME="process")
    port, prefect_port = free_port(), free_port()
    log = tmp_path / "up.log"
    cli = [sys.executable, "-m", "gpufleet.cli.main"]
    with log.open("w") as out:
        up = subprocess.Popen([*cli, "up", "--demo", "--port", str(port), "--prefect-port", str(prefect_port),
                               "--node-name", "local"], env=env, stdout=out, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: "is answering" in log.read_text() or up.poll() is not None, timeout=240,
                   what="demo answering")
        assert up.poll() is None, log.read_text()
        auth = _auth(tmp_path / "home")
        [inst] = httpx.get(f"{api}/v1/instances", headers=auth).json()
        backend = inst["pid"]

        # the same home, other ports: refused, naming the first up; nothing of it touched
        again = subprocess.run([*cli, "up", "--port", str(free_port()), "--prefect-port", str(free_port())],
                               env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 2, again.stdout + again.stderr
        said = " ".join((again.stdout + again.stderr).split())
        assert f"pid {up.pid}" in said and f"port {port}" in said and "gpufleet down" in said, said
        # another home, the same port: refused, naming the first up and its home
        other = {**env, "GPUFLEET_HOME": str(tmp_path / "other")}
        again = subprocess.run([*cli, "up", "--port", str(port), "--prefect-port", str(free_port())],
                               env=other, capture_output=True, text=True, timeout=60)
        assert again.returncode == 2, again.stdout + again.stderr
        said = " ".join((again.stdout + again.stderr).split())
        assert f"port {port} (--port) is taken by a running gpufleet cluster: `gpufleet up` pid {up.pid}" in said, said
        assert f"GPUFLEET_HOME={tmp_path / 'home'} gpufleet down" in said, said
        assert (tmp_path / "home" / "up.json").exists() and pid_alive(backend)

        # the node dies: restarted, the backend keeps running and is adopted again
        [worker] = httpx.get(f"{api}/v1/workers", headers=auth).json()
        os.kill(_children(up.pid)["node"], signal.SIGKILL)
        wait_until(lambda: "restarted node-local" in log.read_text(), timeout=30, what="node restarted")
        assert "node-local exited with code -9" in log.read_text()
        wait_until(lambda: [w["address"] for w in httpx.get(f"{api}/v1/workers", headers=auth).json() if w["ready"]]
                   not in ([], [worker["address"]]), timeout=60, what="node registered again (a new API port)")
        assert pid_alive(backend)
        chat(inst["port"])
        # the server dies: restarted
        os.kill(_children(up.pid)["server"], signal.SIGKILL)
        wait_until(lambda: "restarted server" in log.read_text(), timeout=30, what="server restarted")
        wait_until(lambda: _answers(f"{api}/v1/health"), timeout=90, what="server answering again")
        [after] = httpx.get(f"{api}/v1/instances", headers=auth).json()
        assert (after["id"], after["pid"], after["state"]) == (inst["id"], backend, "RUNNING") and pid_alive(backend)
        assert up.poll() is None

        down = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.kill()
    assert not pid_alive(backend)
    assert not (tmp_path / "home" / "up.json").exists()
    prefect_postgres.discard(tmp_path / "home")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False
