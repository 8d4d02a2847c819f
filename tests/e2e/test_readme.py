"""Issue 17: the README's usage block works verbatim on a fresh home right after the quickstart
(`gpufleet up --demo`), in order, as a user would type it into a shell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet.cli import prefect_postgres
from tests.e2e.conftest import free_port, wait_until
from tests.unit.test_readme_lists_deployments import ROOT, usage_block

pytestmark = pytest.mark.e2e


def test_the_readme_usage_block_runs_as_written_after_the_quickstart(tmp_path: Path) -> None:
    block = usage_block((ROOT / "README.md").read_text())
    home = tmp_path / "user"  # ~ of a new user: ~/.gpufleet is the default home
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GPUFLEET_"))}
    env.update(HOME=str(home), GPUFLEET_RUNTIME="process",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")  # source .venv/bin/activate
    port, prefect_port = free_port(), free_port()
    log = tmp_path / "up.log"
    with log.open("w") as out:  # the quickstart's last step, on ports of its own
        up = subprocess.Popen(["gpufleet", "up", "--demo", "--port", str(port), "--prefect-port", str(prefect_port)],
                              env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "is answering" in log.read_text() or up.poll() is not None, timeout=240,
                   what="the quickstart's demo answering")
        assert up.poll() is None, log.read_text()
        # "other shells need export GPUFLEET_SERVER_URL=… only if you changed the port": we did
        shell = {**env, "GPUFLEET_SERVER_URL": f"http://127.0.0.1:{port}"}
        run = subprocess.run(["bash", "-e", "-o", "pipefail", "-x", "-c", block], env=shell, cwd=home,
                             capture_output=True, text=True, timeout=900)
        said = f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
        assert run.returncode == 0, said
        for expected in ("deployment chat created with 2 replica(s)", "scaling chat to 3 replica(s)",
                         "deployment chat updated", "deleting instance", "chat deleted"):
            assert expected in run.stdout, said
        assert "Traceback" not in run.stderr, said
        down = subprocess.run(["gpufleet", "down"], env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.kill()
        prefect_postgres.discard(home / ".gpufleet")
