"""Prefect-native operations end to end (issue 18): runs named after what they do, schedule
rules made with the CLI or in Prefect's API firing through Prefect's scheduler and scaling or
restarting the deployment, and bad schedule input refused with nothing written."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tests.e2e.conftest import E2ECluster, wait_until
from tests.e2e.prefect_support import final_run_named, fire_schedules, prefect_client, runs_named


def running(cluster: E2ECluster, name: str) -> list[dict]:
    return [i for i in cluster.api_instances(name) if i["state"] == "RUNNING" and not i["deleting"]]


def scale_schedules(cluster: E2ECluster) -> list:
    with prefect_client(cluster) as c:
        return c.read_deployment_schedules(c.read_deployment_by_name("scale/gpufleet").id)


def test_runs_are_named_after_operation_and_target(cluster: E2ECluster, tiny_gguf: Path) -> None:
    cluster.cli("deploy", "--name", "named", "--local-path", str(tiny_gguf), "--replicas", "1")
    [inst] = running(cluster, "named")
    deploy = final_run_named(cluster, "deploy named ×1")
    assert deploy.state.is_completed()
    assert final_run_named(cluster, f"serve-instances {inst['worker']}: {inst['id']}").state.is_completed()
    cluster.cli("scale", "named", "2")
    assert final_run_named(cluster, "scale named → 2").state.is_completed()
    cluster.cli("rm", "named")
    wait_until(lambda: "named" not in {d["name"] for d in cluster.cli_json("ls")}, what="named deleted")
    assert final_run_named(cluster, "delete named").state.is_completed()

    # a run whose deployment is gone has nothing to do: Completed, saying so, not Failed
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: cluster.prefect_api_url}):
        run = run_deployment("scale/gpufleet", parameters={"name": "named", "replicas": 3}, timeout=0)
    final = final_run_named(cluster, "scale named → 3")
    assert final.id == run.id
    assert final.state.is_completed(), final.state
    assert "no longer exists; nothing to do" in final.state.message


def test_schedule_rules_scale_and_restart(cluster: E2ECluster, tiny_gguf: Path) -> None:
    cluster.cli("deploy", "--name", "sched", "--local-path", str(tiny_gguf), "--replicas", "1")

    # a scaling rule made with the CLI: a Prefect schedule on scale/gpufleet with the parameters filled in
    out = cluster.cli("schedule", "add", "sched", "--cron", "0 8 * * 1-5", "--replicas", "2",
                      "--timezone", "Europe/Paris", "--json")
    rule = json.loads(out.stdout)
    assert (rule["deployment"], rule["action"], rule["replicas"], rule["cron"], rule["timezone"]) == \
        ("sched", "scale", 2, "0 8 * * 1-5", "Europe/Paris")
    assert rule["prefect_deployment"] == "scale/gpufleet" and rule["next_run"]
    [prefect_rule] = [s for s in scale_schedules(cluster) if str(s.id) == rule["id"]]
    assert prefect_rule.parameters == {"name": "sched", "replicas": 2}
    assert prefect_rule.schedule.cron == "0 8 * * 1-5" and prefect_rule.schedule.timezone == "Europe/Paris"
    assert [r["id"] for r in cluster.cli_json("schedule", "ls", "sched")] == [rule["id"]]
    assert "scale → 2" in cluster.cli("schedule", "ls").stdout

    # it fires (Prefect's scheduling path): the deployment scales to 2
    run = fire_schedules(cluster, "scale/gpufleet", {"name": "sched", "replicas": 2})
    assert run.state.is_completed(), run.state
    assert run.name == "scale sched → 2"
    assert len(running(cluster, "sched")) == 2
    assert cluster.cli_json("ls") and [d for d in cluster.cli_json("ls") if d["name"] == "sched"][0]["replicas"] == 2
    cluster.cli("schedule", "rm", rule["id"])
    assert cluster.cli_json("schedule", "ls", "sched") == []

    # a schedule made directly in Prefect (its API, as the UI does) is a rule like any other
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import IntervalSchedule

    with prefect_client(cluster) as c:
        dep = c.read_deployment_by_name("scale/gpufleet")
        anchor = datetime.now(timezone.utc) - timedelta(hours=1)
        [made] = c.create_deployment_schedules(dep.id, [DeploymentScheduleCreate(
            schedule=IntervalSchedule(interval=timedelta(days=1), anchor_date=anchor), active=True,
            parameters={"name": "sched", "replicas": 1})])
    [listed] = cluster.cli_json("schedule", "ls", "sched")
    assert (listed["id"], listed["action"], listed["replicas"]) == (str(made.id), "scale", 1)
    run = fire_schedules(cluster, "scale/gpufleet", {"name": "sched", "replicas": 1})
    assert run.state.is_completed(), run.state
    assert len(running(cluster, "sched")) == 1
    cluster.cli("schedule", "rm", str(made.id))

    # a restart rule: replicas restarted one at a time, never zero RUNNING
    cluster.cli("scale", "sched", "2")
    wait_until(lambda: len(running(cluster, "sched")) == 2, timeout=120, what="2 RUNNING")
    before = {i["id"]: i["pid"] for i in running(cluster, "sched")}
    out = cluster.cli("schedule", "add", "sched", "--cron", "30 3 * * *", "--restart")
    assert "default time zone UTC" in out.stdout
    [restart_rule] = cluster.cli_json("schedule", "ls", "sched")
    assert (restart_rule["action"], restart_rule["prefect_deployment"]) == ("restart", "restart-deployment/gpufleet")
    fewest: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            fewest.append(len(running(cluster, "sched")))
            stop.wait(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        run = fire_schedules(cluster, "restart-deployment/gpufleet", {"name": "sched"})
    finally:
        stop.set()
        watcher.join()
    assert run.state.is_completed(), run.state
    assert run.name == "restart-deployment sched"
    assert min(fewest) >= 1, "a restart left no RUNNING replica"
    after = {i["id"]: i["pid"] for i in running(cluster, "sched")}
    assert after.keys() == before.keys() and all(after[i] != before[i] for i in before)
    for iid in before:
        assert runs_named(cluster, f"restart instance {iid}")
    cluster.cli("schedule", "rm", restart_rule["id"])
    cluster.cli("rm", "sched")


def test_bad_schedule_input_is_refused_and_nothing_is_written(cluster: E2ECluster, tiny_gguf: Path) -> None:
    cluster.cli("deploy", "--name", "badsched", "--local-path", str(tiny_gguf), "--replicas", "1", "--no-wait")
    before = len(scale_schedules(cluster))
    cases = [
        (["--cron", "61 * * * *", "--replicas", "1"], "cron"),
        (["--cron", "not a cron", "--replicas", "1"], "cron"),
        (["--cron", "0 8 * * *", "--replicas", "1", "--timezone", "Mars/Olympus"], "timezone"),
        (["--cron", "0 8 * * *", "--replicas", "-1"], "replicas"),
        (["--cron", "0 8 * * *"], "--replicas"),
        (["--cron", "0 8 * * *", "--replicas", "2", "--restart"], "--replicas"),
    ]
    for args, words in cases:
        proc = cluster.cli("schedule", "add", "badsched", *args, check=False)
        assert proc.returncode != 0, args
        assert words.lower() in proc.stderr.lower(), (args, proc.stderr)
    proc = cluster.cli("schedule", "add", "no-such-deployment", "--cron", "0 8 * * *", "--replicas", "1", check=False)
    assert proc.returncode != 0 and "no-such-deployment" in proc.stderr
    proc = cluster.cli("schedule", "rm", "00000000-0000-0000-0000-000000000000", check=False)
    assert proc.returncode != 0 and "no schedule" in proc.stderr
    assert len(scale_schedules(cluster)) == before
    assert cluster.cli_json("schedule", "ls", "badsched") == []
    cluster.cli("rm", "badsched")


def test_two_scale_runs_of_one_deployment_never_interleave(cluster: E2ECluster, tiny_gguf: Path) -> None:
    """Both runs started at once from Prefect: the second waits for the first's slot of the
    concurrency limit gpufleet-scale-<name>; the count asked for last (by issue time) wins."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    cluster.cli("deploy", "--name", "serial", "--local-path", str(tiny_gguf), "--replicas", "1")
    now = datetime.now(timezone.utc)
    with temporary_settings(updates={PREFECT_API_URL: cluster.prefect_api_url}):
        first = run_deployment("scale/gpufleet", timeout=0, parameters={
            "name": "serial", "replicas": 3, "issued_at": now.isoformat()})
        second = run_deployment("scale/gpufleet", timeout=0, parameters={
            "name": "serial", "replicas": 2, "issued_at": (now + timedelta(seconds=1)).isoformat()})
    runs = [final_run_named(cluster, "scale serial → 3"), final_run_named(cluster, "scale serial → 2")]
    assert {r.id for r in runs} == {first.id, second.id} and all(r.state.is_completed() for r in runs)
    with prefect_client(cluster) as c:
        spans = []
        for run in runs:
            tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            steps = [t for t in tasks if t.start_time is not None]
            spans.append((min(t.start_time for t in steps), max(t.end_time for t in steps)))
        limit = c.read_global_concurrency_limit_by_name("gpufleet-scale-serial")
    (a0, a1), (b0, b1) = sorted(spans)
    assert a1 <= b0, f"the two scale runs' steps overlap: {spans}"
    assert limit.limit == 1
    assert len(running(cluster, "serial")) == 2
    assert [d for d in cluster.cli_json("ls") if d["name"] == "serial"][0]["replicas"] == 2
    cluster.cli("rm", "serial")
