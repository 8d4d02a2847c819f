"""Issue 17, the operator's day on the session's cluster: waits that say why, requests that
mean what they report (one application per request id, a later request wins over a late one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import E2ECluster

pytestmark = pytest.mark.e2e


def test_an_unplaceable_deploy_says_why_while_waiting_and_on_timeout(cluster: E2ECluster, tiny_gguf: Path) -> None:
    proc = cluster.cli("deploy", "--name", "nowhere", "--local-path", str(tiny_gguf),
                       "--worker-selector", "gpu=a100", "--timeout", "15", check=False, timeout=90)
    try:
        assert proc.returncode == 1, proc.stdout + proc.stderr
        waiting = [line for line in proc.stdout.splitlines() if line.startswith("waiting: nowhere: 0/1 ready — ")]
        assert any("PENDING: cannot be placed: " in line for line in waiting), proc.stdout
        # the reason for every worker, as the server gives it
        assert any("node-a" in line and "node-b" in line for line in waiting), proc.stdout
        err = proc.stderr
        assert "nowhere did not converge within 15 s: nowhere: 0/1 ready — " in err, err
        assert "PENDING: cannot be placed: " in err and "what to try:" in err and "gpufleet plan" in err, err
        assert "Traceback" not in err
    finally:
        cluster.cli("rm", "nowhere")
