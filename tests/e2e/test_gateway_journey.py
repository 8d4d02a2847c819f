"""The gateway end to end on the real cluster (Prefect, the gpufleet server, two nodes, real
llama.cpp backends): deploy two replicas, call them through the server's OpenAI-compatible
endpoint and through a separate `gpufleet gateway` process, then scale down to one while a
long stream runs on each replica — the one removed is drained: its stream completes, and
new requests meanwhile all go to the one that stays. /metrics says what happened."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpufleet.demo.tiny_model import TinyModelShape, write_tiny_llama_gguf
from gpufleet.cli.embedded import stop_children
from tests.e2e.conftest import E2ECluster, free_port, wait_until

pytestmark = pytest.mark.e2e

#: long enough context for a stream of tens of seconds on the tiny model
LONG = TinyModelShape(context_length=32768)
#: the cluster's admin key (authentication is on), set by the `auth` fixture for the calls below
AUTH: dict[str, str] = {}


@pytest.fixture(autouse=True)
def auth(cluster: E2ECluster) -> Iterator[None]:
    AUTH.update(cluster.headers)
    yield
    AUTH.clear()


def metric(base: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{base}/metrics", headers=AUTH, timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and labels.items() <= s.labels.items())


def chat(base: str, model: str, **extra: object) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", timeout=120, headers=AUTH, json={
        "model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8, **extra})


#: every stream this journey started: closed at its end, so a failed journey leaves no generation
#: running on the machine for the next tests
STREAMS: list["Stream"] = []


class Stream(threading.Thread):
    def __init__(self, base: str, model: str, tokens: int) -> None:
        super().__init__(daemon=True)
        self.base, self.model, self.tokens = base, model, tokens
        self.body = b""
        self.first = threading.Event()
        self.ended_at = 0.0
        self.stop = False  # set when the journey ends: the stream is closed, and its generation ends
        STREAMS.append(self)

    def run(self) -> None:
        body = {"model": self.model, "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": self.tokens, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", f"{self.base}/v1/chat/completions", json=body, headers=AUTH, timeout=600) as r:
            for chunk in r.iter_raw():
                self.body += chunk
                self.first.set()
                if self.stop:
                    break
        self.ended_at = time.monotonic()


#: the drain grace of this journey's own node: long streams must finish within it, and how long
#: a stream of N tokens takes depends on the machine's load; 300 s leaves room for any of it
GRACE_S = "300"


@pytest.fixture
def gateway_node(cluster: E2ECluster) -> Iterator[str]:
    """A node of this journey's own, with a long drain grace; removed afterwards, so the other
    journeys' placements never see it."""
    child = cluster.start_node("node-gw", labels={"gateway-journey": "yes"}, env={"GPUFLEET_DRAIN_GRACE_S": GRACE_S})
    try:
        yield "node-gw"
    finally:
        for stream in STREAMS:
            stream.stop = True
        STREAMS.clear()
        cluster.cli("rm", "gwj", check=False)
        stop_children([child])
        cluster.children.remove(child)
        httpx.delete(f"{cluster.api_url}/v1/workers/node-gw", params={"force": "true"}, headers=cluster.headers,
                     timeout=30)


def test_gateway_journey(cluster: E2ECluster, gateway_node: str, tmp_path: Path) -> None:
    model = write_tiny_llama_gguf(tmp_path / "long.gguf", LONG)
    api = cluster.api_url
    cluster.cli("deploy", "--name", "gwj", "--local-path", str(model), "--replicas", "2",
                "--worker-selector", "gateway-journey=yes",
                "--backend-param=--ctx-size=32768", "--backend-param=--parallel=2")
    instances = cluster.api_instances("gwj")
    assert [(i["state"], i["worker"]) for i in instances] == [("RUNNING", gateway_node)] * 2
    names = sorted(i["name"] for i in instances)

    # the server's endpoint: listed, answered by llama.cpp, spread over both replicas
    listed = httpx.get(f"{api}/v1/models", headers=AUTH, timeout=10).json()
    assert httpx.get(f"{api}/v1/models", timeout=10).status_code == 401  # authentication is on
    assert "gwj" in [m["id"] for m in listed["data"]]
    for _ in range(4):
        r = chat(api, "gwj")
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["role"] == "assistant"
    assert [metric(api, "gpufleet_gateway_requests_total", deployment="gwj", replica=n) for n in names] == [2, 2]
    assert chat(api, "no-such").status_code == 404

    # a separate gateway process, its table from the server's API
    port = free_port()
    gateway = subprocess.Popen([sys.executable, "-m", "gpufleet.cli.main", "gateway", "--server", api,
                                "--port", str(port)], env=cluster.env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        gw = f"http://127.0.0.1:{port}"
        wait_until(lambda: _healthy(gw), timeout=30, what="gpufleet gateway healthy")
        for _ in range(2):
            r = chat(gw, "gwj")
            assert r.status_code == 200, r.text
        assert metric(gw, "gpufleet_gateway_requests_total", deployment="gwj", status="200") == 2
    finally:
        gateway.terminate()
        gateway.wait(timeout=15)

    # scale down with a long stream on each replica: the one removed drains
    # two slots per replica: the stream holds one, new requests get the other. The streams must
    # outlast the scale run's dispatch (up to ~10 s on a loaded machine) and stay inside the node's
    # drain grace (300 s): at least ~25 s, from the time two streams at once take for 1,500 tokens,
    # since the machine's load changes it. The time per token grows with the context (attention),
    # so sizing by a linear rate gives at least 25 s: measured, 3,082 tokens took 2.1 × the time of
    # 1,500 (a square law had sized streams that ended after 10 s). At most 6,000 tokens: the rate
    # falls with the context, and a CI run's streams of 15,000 (calibrated at 600 tokens/s) averaged
    # 50 tokens/s and took 303 s, past the grace, which cut them
    calibration = [Stream(api, "gwj", 1500) for _ in range(2)]
    t0 = time.monotonic()
    for s in calibration:
        s.start()
    for s in calibration:
        s.join(timeout=120)
    took = time.monotonic() - t0
    rate = 1500 / took
    streams = [Stream(api, "gwj", max(1500, min(6000, int(1500 * 25 / took)))) for _ in range(2)]
    for s in streams:
        s.start()
        assert s.first.wait(60)
    in_flight = [metric(api, "gpufleet_gateway_in_flight_requests", deployment="gwj", replica=n) for n in names]
    assert in_flight == [1, 1], (
        f"in flight per replica {dict(zip(names, in_flight))}; calibration streams still running: "
        f"{[s.is_alive() for s in calibration]} after {took:.1f} s; instances: "
        f"{[(i['name'], i['state'], i['restart_count'], i.get('state_message')) for i in cluster.api_instances('gwj')]}")
    scaled = threading.Thread(target=cluster.cli, args=("scale", "gwj", "1"))
    scale_started = time.monotonic()
    scaled.start()
    removing = wait_until(lambda: next((i for i in cluster.api_instances("gwj") if i["deleting"]), None),
                          timeout=60, what="an instance marked for removal")
    stays = next(i["name"] for i in cluster.api_instances("gwj") if i["id"] != removing["id"])
    time.sleep(1.5)  # the server's table is re-read within a second
    before = metric(api, "gpufleet_gateway_requests_total", deployment="gwj", replica=stays)
    for _ in range(4):  # new requests while the removed replica drains: all to the one that stays
        assert chat(api, "gwj").status_code == 200
    assert metric(api, "gpufleet_gateway_requests_total", deployment="gwj", replica=stays) - before == 4
    assert all(s.is_alive() for s in streams), (
        f"a stream ended before the drain was exercised: calibration {took:.1f} s for 1500 tokens; streams "
        f"{[(s.tokens, len(s.body), s.body.rstrip().endswith(b'data: [DONE]'), round(s.ended_at - scale_started, 1)) for s in streams]} "
        f"(tokens, bytes, complete, ended s after the scale began); now {time.monotonic() - scale_started:.1f} s after")
    for s in streams:
        s.join(timeout=300)
    scaled.join(timeout=300)
    logs = "".join(p.read_text(errors="replace") for p in (cluster.home / "logs").glob("node-*.log"))
    drains = "\n".join(line for line in logs.splitlines() if "drain" in line or "backend stopped" in line)
    for s in streams:  # neither stream was cut: both end with llama.cpp's last event
        if not s.body.rstrip().endswith(b"data: [DONE]"):
            pytest.fail(f"a stream was cut after {len(s.body)} bytes (rate {rate:.0f} tok/s, {s.tokens} tokens "
                        f"asked); the nodes' stop steps:\n{drains}", pytrace=False)
    assert time.monotonic() - scale_started > 2
    # the node's stop step saw the backend busy, waited, and stopped it once idle
    waited = re.search(rf"instance {removing['id']} on node-\w+: drained \(idle\) in ([0-9.]+) s", logs)
    assert waited and float(waited[1]) > 3, drains  # it waited for the stream, not only the 2 s settle
    left = cluster.api_instances("gwj")
    assert [i["name"] for i in left] == [stays] and left[0]["state"] == "RUNNING"
    assert chat(api, "gwj").status_code == 200
    assert metric(api, "gpufleet_instances", deployment="gwj", state="RUNNING") == 1
    assert metric(api, "gpufleet_gateway_in_flight_requests", deployment="gwj") == 0


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
