"""Journey 1, the README's main job: `gpufleet up --demo` brings up a one-machine
cluster with a tiny model answering; `gpufleet down` stops all of it, backends included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from gpufleet.cli import prefect_postgres
from tests.e2e.conftest import free_port, pid_alive, wait_until


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
        [inst] = httpx.get(f"http://127.0.0.1:{port}/v1/instances").json()
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
    assert not (tmp_path / "home" / "up.pid").exists()
    try:
        httpx.get(f"http://127.0.0.1:{pg_port}/", timeout=1)
    except httpx.TransportError:
        pass
    else:
        raise AssertionError("Prefect's PostgreSQL still listens")
    assert prefect_database_pid(tmp_path / "home") is None  # stopped cleanly: no postmaster.pid left
    prefect_postgres.discard(tmp_path / "home")


def prefect_database_pid(home: Path) -> int | None:
    """The embedded PostgreSQL's postmaster.pid (its data is in the home, or outside it as root)."""
    data = prefect_postgres.root_data_dir(home) / "data" if os.geteuid() == 0 else home / "prefect" / "postgres" / "data"
    try:
        return int((data / "postmaster.pid").read_text().split()[0])
    except FileNotFoundError:
        return None
