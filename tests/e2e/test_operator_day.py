"""Issue 17, the operator's day on the session's cluster: waits that say why, requests that
mean what they report (one application per request id, a later request wins over a late one)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from gpufleet.client import ISSUED_AT, REQUEST_ID
from tests.e2e.conftest import E2ECluster, wait_until

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


def test_scale_requests_mean_what_they_report(cluster: E2ECluster, tiny_gguf: Path) -> None:
    """Through the real server, Prefect flows and node: a retried scale is applied once (one flow
    run), and a scale issued earlier that arrives later is refused, the newer count standing."""
    cluster.cli("deploy", "--name", "ordered", "--local-path", str(tiny_gguf))
    url = f"{cluster.api_url}/v1/deployments/ordered/scale"
    try:
        now = datetime.now(timezone.utc)
        newer = {REQUEST_ID: uuid.uuid4().hex, ISSUED_AT: now.isoformat(), **cluster.headers}
        first = httpx.post(url, json={"replicas": 2}, headers=newer, timeout=30)
        again = httpx.post(url, json={"replicas": 2}, headers=newer, timeout=30)
        assert first.status_code == again.status_code == 202, first.text + again.text
        assert again.json()["flow_run_id"] == first.json()["flow_run_id"]  # one run, not two
        assert again.headers.get("Idempotent-Replayed") == "true"
        late = httpx.post(url, json={"replicas": 3}, timeout=30,
                          headers={REQUEST_ID: uuid.uuid4().hex, ISSUED_AT: (now - timedelta(seconds=5)).isoformat(),
                                   **cluster.headers})
        assert late.status_code == 412 and "arrived late and was not applied" in late.text, late.text
        wait_until(lambda: [i["state"] for i in cluster.instances("ordered")] == ["RUNNING", "RUNNING"],
                   timeout=180, what="2 RUNNING instances")
        assert next(d for d in cluster.cli_json("ls") if d["name"] == "ordered")["replicas"] == 2
    finally:
        cluster.cli("rm", "ordered")
