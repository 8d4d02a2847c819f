"""Deploying from a hub end to end: `gpufleet deploy --hf` of a tiny GGUF served by
the hub stand-in, with the endpoint and token in the Prefect block; the server
reads the header by range, each node pulls the file once into its cache, and the
replicas answer chat. The token never shows in state messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import HUB_TOKEN, E2ECluster, chat, wait_until
from tests.support.fake_hub import FakeHub

TOKEN = HUB_TOKEN


@pytest.fixture
def hub(e2e_hub: FakeHub, tiny_gguf: Path) -> FakeHub:
    e2e_hub.add_repo("org/tiny-GGUF", {
        "tiny-F32.gguf": tiny_gguf.read_bytes(), "tiny-Q8_0.gguf": b"GGUF not really", "README.md": b"tiny",
    }, token=TOKEN)
    return e2e_hub


def test_deploy_from_hugging_face_pulls_once_per_node_and_serves(cluster: E2ECluster, hub: FakeHub) -> None:
    out = cluster.cli("deploy", "--name", "hubtiny", "--hf", "org/tiny-GGUF", "--file", "*F32*", "--replicas", "2")
    assert TOKEN not in out.stdout + out.stderr
    running = wait_until(lambda: [i for i in cluster.instances("hubtiny") if i["state"] == "RUNNING"]
                         if len([i for i in cluster.instances("hubtiny") if i["state"] == "RUNNING"]) == 2 else None,
                         timeout=120, what="two RUNNING replicas")
    for inst in running:
        assert chat(inst["port"])
        assert TOKEN not in inst["state_message"]
    workers = {i["worker"] for i in running}
    pulls = [r for r in hub.requests("GET", "/resolve/") if "tiny-F32.gguf" in r.path and not r.range]
    assert len(pulls) == len(workers)  # one download per node, however many replicas it runs
    header_reads = [r for r in hub.requests("GET", "/resolve/") if r.range]
    assert header_reads and all(r.body_bytes <= 2 << 20 for r in header_reads)  # the server read a header window only
    assert not hub.requests(contains="tiny-Q8_0.gguf")  # only the chosen file is touched
    for w in workers:
        cached = cluster.node_home(w) / "models/hf/org--tiny-GGUF/default/tiny-F32.gguf"
        assert cached.stat().st_size == len(hub.repos["org/tiny-GGUF"].files["tiny-F32.gguf"])  # type: ignore[arg-type]
    cluster.cli("rm", "hubtiny")
