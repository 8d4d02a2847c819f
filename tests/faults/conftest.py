"""A real cluster for the fault suite, on the compressed lifecycle clock.

Like the e2e cluster (tests/e2e/conftest.py: a Prefect server on PostgreSQL, the gpufleet
server, node agents as real processes, real llama.cpp backends), with
``GPUFLEET_TIME_SCALE=0.1``: the restart back-off runs 1 s, 2 s, 4 s … capped at 30 s, the
stable window is 60 s and the lost-worker grace 30 s, so the real schedule is asserted in
seconds; running backends are probed every second (three failures make an ERROR). Nodes: ``fa`` (started with the cluster) and ``fb``, ``fc`` labelled ``pool=move``.

Figures measured by the tests go to the file named by ``GPUFLEET_FAULT_FIGURES`` (JSON), which
``benchmarks/lifecycle_faults.py`` prints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpufleet.cli import prefect_postgres
from gpufleet.cli.embedded import start_cluster, stop_children
from tests.e2e.conftest import E2ECluster, authenticated_env, free_port, stop_leftover_backends, use_key
from tests.support.fake_hub import FakeHub

TIME_SCALE = 0.1
#: seconds on the real clock, before the scale (the default: 300 s)
LOST_WORKER_GRACE = 300
#: health probes of running backends: every second, three failures in a row (timeout 2 s each)
PROBE_INTERVAL = 1
PROBE_FAILURES = 3
LABELS = {"fb": {"pool": "move"}, "fc": {"pool": "move"}}


class FaultCluster(E2ECluster):
    def restart_node(self, name: str) -> None:
        self.start_node(name, labels=LABELS.get(name))

    def node_child(self, name: str):  # noqa: ANN201
        return next(c for c in self.children if c.name == f"node-{name}")


@pytest.fixture(scope="session")
def faults_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    home = tmp_path_factory.mktemp("gpufleet-faults")
    saved = {k: os.environ.pop(k) for k in ("PREFECT_API_URL", "GPUFLEET_SERVER_URL") if k in os.environ}
    env = {"GPUFLEET_HEARTBEAT_INTERVAL": "1", "GPUFLEET_WORKER_TIMEOUT": "5", "GPUFLEET_RUNTIME": "process",
           "GPUFLEET_TIME_SCALE": str(TIME_SCALE), "GPUFLEET_LOST_WORKER_GRACE": str(LOST_WORKER_GRACE),
           "GPUFLEET_PROBE_INTERVAL": str(PROBE_INTERVAL), "GPUFLEET_PROBE_FAILURES": str(PROBE_FAILURES)}
    saved.update({k: os.environ[k] for k in env if k in os.environ})
    os.environ.update(env)
    try:
        c = start_cluster(free_port(), free_port(), "fa", None, home, log=lambda *_: None)
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)
    cluster = FaultCluster(c.api_url, c.prefect_api_url, home, authenticated_env(c), c.children, c.api_key,
                           c.join_token)
    restore = use_key(c.api_key)
    try:
        for name, labels in LABELS.items():
            cluster.start_node(name, labels=labels)
        yield cluster
    finally:
        restore()
        stop_children(cluster.children)
        stop_leftover_backends(home)
        prefect_postgres.discard(home)


@pytest.fixture(scope="session")
def faults_hub(faults_cluster: FaultCluster) -> Iterator[FakeHub]:
    """The hub stand-in, its endpoint saved in the Prefect block `hub-credentials` of the fault
    cluster (the server and the nodes read it), for the download faults."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from blocks.hub_credentials import HubCredentials

    hub = FakeHub().start()
    with temporary_settings(updates={PREFECT_API_URL: faults_cluster.prefect_api_url}):
        HubCredentials(huggingface_endpoint=hub.url).save("default", overwrite=True)
        try:
            yield hub
        finally:
            HubCredentials.delete("default")
            hub.stop()


@pytest.fixture(scope="session")
def figures() -> Iterator[dict[str, Any]]:
    """What the tests measured, written for benchmarks/lifecycle_faults.py."""
    measured: dict[str, Any] = {}
    yield measured
    target = os.environ.get("GPUFLEET_FAULT_FIGURES")
    if target:
        Path(target).write_text(json.dumps(measured, indent=2))
