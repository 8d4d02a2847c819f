"""`gpufleet edit … --rollout` against the real cluster: running instances replaced one at a
time with real llama.cpp backends, at least one RUNNING at every moment (polled), and a
rollout whose new configuration the backend refuses stops, saying why, with the old
instances still serving."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import chat, pid_alive, wait_until
from tests.faults.conftest import FaultCluster

pytestmark = [pytest.mark.faults]


class RunningWatch:
    """Counts RUNNING instances of a deployment every 50 ms on a thread; the fewest seen."""

    def __init__(self, cluster: FaultCluster, deployment: str) -> None:
        self.cluster, self.deployment = cluster, deployment
        self.fewest: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                count = sum(i["state"] == "RUNNING" and not i["deleting"]
                            for i in self.cluster.api_instances(self.deployment))
            except httpx.HTTPError:
                continue
            self.fewest = count if self.fewest is None else min(self.fewest, count)
            self.samples += 1
            self._stop.wait(0.05)

    def __enter__(self) -> RunningWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def all_running(cluster: FaultCluster, name: str, n: int) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        live = [i for i in cluster.api_instances(name) if not i["deleting"]]
        return live if len(live) == n and all(i["state"] == "RUNNING" for i in live) else None

    return wait_until(ready, timeout=180, interval=0.1, what=f"{n} RUNNING instances of {name}")


def test_rollout_replaces_one_at_a_time_and_stops_on_a_failing_config(
        faults_cluster: FaultCluster, tiny_gguf: Path, figures: dict[str, Any]) -> None:
    c = faults_cluster
    c.cli("deploy", "--name", "roll", "--local-path", str(tiny_gguf), "--replicas", "2")
    old = all_running(c, "roll", 2)

    # without --rollout, edit keeps its rule: running instances keep their configuration (now outdated)
    c.cli("edit", "roll", "--backend-param=--ctx-size=512")
    kept = all_running(c, "roll", 2)
    assert [i["id"] for i in kept] == [i["id"] for i in old] and all(i["outdated"] for i in kept)

    t0 = time.time()
    with RunningWatch(c, "roll") as watch:
        out = c.cli("edit", "roll", "--backend-param=--ctx-size=256", "--rollout", timeout=300).stdout
        took = time.time() - t0
    assert "rollout done" in out, out
    assert watch.samples > 10 and watch.fewest is not None and watch.fewest >= 1, (watch.fewest, watch.samples)
    new = all_running(c, "roll", 2)
    assert not {i["id"] for i in new} & {i["id"] for i in old}
    assert all(i["config"]["backend_params"] == ["--ctx-size=256"] and not i["outdated"] for i in new)
    assert all(i["generation"] > old[0]["generation"] for i in new)
    assert not any(pid_alive(i["pid"]) for i in old)
    assert all(chat(i["port"]) for i in new)
    dep = httpx.get(f"{c.api_url}/v1/deployments/roll", headers=c.headers).json()
    assert not dep["rolling_out"] and dep["rollout_status"].startswith("rollout done")

    # a flag llama-server accepts by name but refuses when it starts: the first new instance
    # fails, the rollout stops and says why, and the two instances of the last rollout keep serving
    t1 = time.time()
    with RunningWatch(c, "roll") as bad_watch:
        failed = c.cli("edit", "roll", "--backend-param=--lora=/nonexistent/adapter.gguf", "--rollout",
                       check=False, timeout=300)
    stop_s = time.time() - t1
    assert failed.returncode != 0, failed.stdout
    message = failed.stdout + failed.stderr
    assert "rollout stopped" in message and "keep serving" in message, message
    assert bad_watch.fewest is not None and bad_watch.fewest >= 2, bad_watch.fewest
    kept = all_running(c, "roll", 2)
    assert {i["id"] for i in kept} == {i["id"] for i in new}
    assert all(chat(i["port"]) for i in kept)
    dep = httpx.get(f"{c.api_url}/v1/deployments/roll", headers=c.headers).json()
    assert not dep["rolling_out"] and "rollout stopped" in dep["rollout_status"]
    figures["rollout"] = {"replicas": 2, "rollout_s": round(took, 2), "fewest_running_during": watch.fewest,
                          "failed_rollout_stopped_after_s": round(stop_s, 2),
                          "fewest_running_during_failed": bad_watch.fewest,
                          "lost": "0 deployments, 0 instances, 0 log runs"}
    c.cli("rm", "roll")
