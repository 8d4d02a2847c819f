"""gpufleet's Prefect events, and a Prefect automation acting on them (issue 18): an
instance that fails emits `gpufleet.instance.error` (resource gpufleet.instance.<id>, the
deployment and worker related); an automation made through the Prefect API on that event
runs scale/gpufleet with replicas 0 for the deployment named in the event."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

from tests.e2e.conftest import E2ECluster, wait_until
from tests.e2e.prefect_support import final_run_named, prefect_client


def events_named(cluster: E2ECluster, prefix: str, resource_id: str) -> list[dict[str, Any]]:
    with prefect_client(cluster) as c:
        resp = c.request("POST", "/events/filter", json={
            "filter": {"event": {"prefix": [prefix]}, "resource": {"id": [resource_id]},
                       "occurred": {"since": "2000-01-01T00:00:00Z"}}, "limit": 50})
        return resp.json()["events"]


def test_an_automation_scales_a_failing_deployment_to_zero(cluster: E2ECluster, tiny_gguf: Path,
                                                           tmp_path: Path) -> None:
    from prefect.automations import Automation
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.settings import PREFECT_API_URL, temporary_settings

    model = tmp_path / "flaky.gguf"
    shutil.copy(tiny_gguf, model)
    cluster.cli("deploy", "--name", "flaky", "--local-path", str(model))
    [inst] = [i for i in cluster.api_instances("flaky") if i["state"] == "RUNNING"]
    resource = f"gpufleet.instance.{inst['id']}"
    running = wait_until(lambda: events_named(cluster, "gpufleet.instance.running", resource), timeout=30,
                         what="a gpufleet.instance.running event")
    related = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in running[0]["related"]}
    assert related == {"deployment": "gpufleet.deployment.flaky", "worker": f"gpufleet.worker.{inst['worker']}"}

    with prefect_client(cluster) as c:
        scale_id = c.read_deployment_by_name("scale/gpufleet").id
    with temporary_settings(updates={PREFECT_API_URL: cluster.prefect_api_url}):
        automation = Automation(
            name="gpufleet: scale a failing deployment to 0",
            trigger=EventTrigger(expect={"gpufleet.instance.error"},
                                 match={"prefect.resource.id": "gpufleet.instance.*", "gpufleet.deployment": "flaky"},
                                 posture=Posture.Reactive, threshold=1),
            actions=[RunDeployment(source="selected", deployment_id=scale_id,
                                   parameters={"name": "{{ event.resource['gpufleet.deployment'] }}",
                                               "replicas": 0})],
        ).create()
    try:
        model.write_bytes(b"GGUF" + b"\0" * 64)  # no longer a model llama.cpp loads: restarts fail too
        os.kill(inst["pid"], signal.SIGKILL)
        error = wait_until(lambda: events_named(cluster, "gpufleet.instance.error", resource), timeout=60,
                           what="a gpufleet.instance.error event")
        assert error[0]["payload"]["message"], "an ERROR event carries its reason"
        run = final_run_named(cluster, "scale flaky → 0", timeout=120)
        assert run.state.is_completed(), run.state
        wait_until(lambda: cluster.api_instances("flaky") == [], timeout=120, what="flaky scaled to 0")
        [dep] = [d for d in cluster.cli_json("ls") if d["name"] == "flaky"]
        assert dep["replicas"] == 0
    finally:
        with temporary_settings(updates={PREFECT_API_URL: cluster.prefect_api_url}):
            automation.delete()
        cluster.cli("rm", "flaky")
