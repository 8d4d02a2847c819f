"""The OpenAI-compatible gateway of the gpufleet server against real llama.cpp servers:
balancing over 2 and 3 replicas, streaming chunk by chunk, a replica killed, waiting for a
replica, 403/404/503/504 in the OpenAI error shape, and /metrics matching what was sent.

One server app and three llama.cpp servers for the module (each a process); each test makes
its own deployments, whose RUNNING instances point at those servers' ports."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gpufleet.gateway.upstream import Upstream
from tests.support.gateway import (
    GatewayServer,
    LlamaServer,
    chat_body,
    start_gateway_server,
    stream_chunks,
    write_long_model,
)

import xllamacpp  # noqa: F401,E402 - a dependency: its absence must fail, not skip


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_long_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def backends(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LlamaServer]]:
    logs = tmp_path_factory.mktemp("llama-logs")
    servers: list[LlamaServer] = []
    try:
        for _ in range(3):
            servers.append(LlamaServer.start(model, logs))
        yield servers
    finally:
        for s in servers:
            s.kill()


@pytest.fixture(scope="module")
def gw(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    mp = pytest.MonkeyPatch()
    mp.setenv("GPUFLEET_GATEWAY_REFRESH_S", "0.2")
    mp.setenv("GPUFLEET_GATEWAY_WAIT_S", "1.5")
    server = start_gateway_server(tmp_path_factory.mktemp("server"), model)
    mp.undo()
    try:
        yield server
    finally:
        server.stop()


def deploy_running(gw: GatewayServer, name: str, backends: list[LlamaServer]) -> list[int]:
    ids = gw.deploy(name, len(backends))
    for iid, backend in zip(ids, backends):
        gw.run(iid, backend)
    return ids


def count(metrics: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in metrics.items() if n == name and labels.items() <= dict(ls).items())


def post(gw: GatewayServer, body: dict, path: str = "/v1/chat/completions", **headers: str) -> httpx.Response:
    return httpx.post(f"{gw.url}{path}", json=body, headers={**gw.headers, **headers}, timeout=120)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "code"} <= set(body["error"]), body
    return body["error"]


def test_spreads_over_two_and_three_replicas(gw: GatewayServer, backends: list[LlamaServer]) -> None:
    """Sequential requests (nothing outstanding) go round the replicas: 6 over 2 is 3 each, 9
    over 3 is 3 each; each answer is llama.cpp's."""
    for name, servers in (("two", backends[:2]), ("three", backends)):
        ids = deploy_running(gw, name, servers)
        before = gw.metrics()
        for _ in range(3 * len(ids)):
            r = post(gw, chat_body(name))
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["role"] == "assistant"
        after = gw.metrics()
        per_replica = [count(after, "gpufleet_gateway_requests_total", deployment=name, replica=gw.instance_name(i))
                       - count(before, "gpufleet_gateway_requests_total", deployment=name,
                               replica=gw.instance_name(i)) for i in ids]
        assert per_replica == [3.0] * len(ids), per_replica


def test_least_outstanding_avoids_the_busy_replica(gw: GatewayServer, backends: list[LlamaServer]) -> None:
    """While a long stream holds replica X, new requests go to the others only."""
    ids = deploy_running(gw, "busy", backends[:3])
    names = [gw.instance_name(i) for i in ids]
    started = threading.Event()
    chunks: list[bytes] = []

    def long_stream() -> None:
        for _, chunk in stream_chunks(f"{gw.url}/v1/chat/completions",
                                      chat_body("busy", max_tokens=2500, stream=True, ignore_eos=True), headers=gw.headers):
            chunks.append(chunk)
            started.set()

    t = threading.Thread(target=long_stream)
    t.start()
    assert started.wait(30)
    busy = [n for n in names if count(gw.metrics(), "gpufleet_gateway_in_flight_requests", replica=n) == 1]
    assert len(busy) == 1, busy
    before = gw.metrics()
    for _ in range(4):
        assert post(gw, chat_body("busy")).status_code == 200
    after = gw.metrics()
    assert t.is_alive(), "the long stream ended before the short requests did; make it longer"
    got = {n: count(after, "gpufleet_gateway_requests_total", replica=n)
           - count(before, "gpufleet_gateway_requests_total", replica=n) for n in names}
    assert got[busy[0]] == 0 and sum(got.values()) == 4, got
    t.join(timeout=120)
    assert b"[DONE]" in b"".join(chunks)


def test_streams_chunk_by_chunk(gw: GatewayServer, backends: list[LlamaServer]) -> None:
    """The answer arrives in many pieces spread over the generation, not in one at the end."""
    deploy_running(gw, "stream", backends[:1])
    arrivals = list(stream_chunks(f"{gw.url}/v1/chat/completions",
                                  chat_body("stream", max_tokens=1500, stream=True, ignore_eos=True),
                                  headers=gw.headers))
    body = b"".join(c for _, c in arrivals)
    events = [line for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]" and len(events) > 1000
    first, last = arrivals[0][0], arrivals[-1][0]
    assert len(arrivals) > 50, f"{len(arrivals)} pieces: the stream was buffered"
    assert last - first > 0.3, "every piece arrived at once: the stream was buffered"
    # the pieces are spread: half of them had arrived before the last third of the time
    assert sum(1 for t, _ in arrivals if t < last - (last - first) / 3) > len(arrivals) / 3


def test_killed_replica_new_requests_go_to_survivors(gw: GatewayServer, model: Path, tmp_path: Path) -> None:
    """A replica killed under load: requests sent after the kill all succeed (the refused
    connection is retried on the survivor); only one already under way there may fail."""
    a, b = LlamaServer.start(model, tmp_path), LlamaServer.start(model, tmp_path)
    try:
        deploy_running(gw, "kill", [a, b])
        results: list[tuple[float, int]] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status = post(gw, chat_body("kill", max_tokens=16)).status_code
                except httpx.HTTPError:
                    status = -1
                results.append((sent, status))

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        b.kill()
        killed_at = time.monotonic()
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        after_kill = [status for sent, status in results if sent > killed_at]
        assert after_kill and all(s == 200 for s in after_kill), after_kill
        assert sum(1 for sent, s in results if sent <= killed_at and s != 200) <= 3
        assert count(gw.metrics(), "gpufleet_gateway_retries_total", deployment="kill", reason="refused") >= 1
    finally:
        a.kill()
        b.kill()


def test_unknown_model_is_404(gw: GatewayServer) -> None:
    r = post(gw, chat_body("no-such-model"))
    assert r.status_code == 404 and error_of(r)["code"] == "model_not_found"
    assert "no-such-model" in error_of(r)["message"]


def test_bad_body_is_400(gw: GatewayServer) -> None:
    r = httpx.post(f"{gw.url}/v1/chat/completions", content=b"not json", headers=gw.headers, timeout=10)
    assert r.status_code == 400 and error_of(r)["type"] == "invalid_request_error"
    r = post(gw, {"messages": []})
    assert r.status_code == 400 and '"model" is required' in error_of(r)["message"]


def test_no_running_replica_waits_then_503(gw: GatewayServer) -> None:
    """Placed but never RUNNING: the request waits the configured 1.5 s, then 503."""
    gw.deploy("starting", 1)
    t0 = time.monotonic()
    r = post(gw, chat_body("starting"))
    waited = time.monotonic() - t0
    assert r.status_code == 503 and error_of(r)["code"] == "no_replica", r.text
    assert 1.4 <= waited < 10, waited
    assert r.headers["retry-after"] == "1"


def test_scaled_to_zero_is_503_at_once(gw: GatewayServer) -> None:
    gw.deploy("zero", 0)
    t0 = time.monotonic()
    r = post(gw, chat_body("zero"))
    assert r.status_code == 503 and "scaled to 0" in error_of(r)["message"]
    assert time.monotonic() - t0 < 1.0


def test_request_waits_for_a_replica_to_come_up(gw: GatewayServer, backends: list[LlamaServer]) -> None:
    """A deployment starting: its first caller waits, and is answered once the replica is RUNNING."""
    [iid] = gw.deploy("late", 1)
    threading.Timer(0.6, gw.run, args=(iid, backends[0])).start()
    r = post(gw, chat_body("late"))
    assert r.status_code == 200, r.text


def test_upstream_timeout_is_504(gw: GatewayServer, model: Path, tmp_path: Path) -> None:
    """A replica that accepts the connection and never answers (SIGSTOPped) → 504 after the
    whole-request timeout."""
    stuck = LlamaServer.start(model, tmp_path)
    gateway = gw.app.state.gateway
    saved = gateway.upstream
    try:
        deploy_running(gw, "stuck", [stuck])
        stuck.pause()
        gateway.upstream = Upstream(request_timeout_s=1.5, connect_timeout_s=1.0)
        t0 = time.monotonic()
        r = post(gw, chat_body("stuck"))
        assert r.status_code == 504 and error_of(r)["code"] == "upstream_timeout", r.text
        assert 1.4 <= time.monotonic() - t0 < 10
    finally:
        gateway.upstream = saved
        stuck.resume()
        stuck.kill()


def test_scoped_key_403_and_models_list(gw: GatewayServer, backends: list[LlamaServer]) -> None:
    """Real keys of the server: an inference key scoped to one deployment calls it and sees only
    it in /v1/models; another deployment is 403 in the OpenAI shape; a node key calls no model;
    no key is 401."""
    deploy_running(gw, "mine", backends[:1])
    deploy_running(gw, "theirs", backends[1:2])
    scoped = {"Authorization": f"Bearer {gw.key('scoped', 'inference', ('mine',))}"}
    r = post(gw, chat_body("theirs"), **scoped)
    assert r.status_code == 403 and error_of(r)["code"] == "model_not_allowed", r.text
    assert post(gw, chat_body("mine"), **scoped).status_code == 200
    listed = httpx.get(f"{gw.url}/v1/models", headers=scoped, timeout=10).json()
    assert [m["id"] for m in listed["data"]] == ["mine"]
    everything = {m["id"] for m in httpx.get(f"{gw.url}/v1/models", headers=gw.headers, timeout=10).json()["data"]}
    assert {"mine", "theirs"} <= everything
    node = post(gw, chat_body("mine"), Authorization=f"Bearer {gw.key('node-x', 'node')}")
    assert node.status_code == 403 and error_of(node)["type"] == "permission_error", node.text
    anonymous = httpx.post(f"{gw.url}/v1/chat/completions", json=chat_body("mine"), timeout=10)
    assert anonymous.status_code == 401 and error_of(anonymous)["type"] == "authentication_error"


def test_completions_and_embeddings_pass_through(gw: GatewayServer, backends: list[LlamaServer]) -> None:
    deploy_running(gw, "paths", backends[:1])
    r = post(gw, {"model": "paths", "prompt": "Hello", "max_tokens": 4}, path="/v1/completions")
    assert r.status_code == 200 and r.json()["choices"][0]["text"] is not None
    # this backend was not started with --embeddings: llama.cpp's own error passes through
    r = post(gw, {"model": "paths", "input": "Hello"}, path="/v1/embeddings")
    assert r.status_code in (200, 501), r.text


def test_metrics_match_what_was_sent(gw: GatewayServer, backends: list[LlamaServer]) -> None:
    ids = deploy_running(gw, "metered", backends[:2])
    completion_tokens = prompt_tokens = 0
    for i in range(4):
        r = post(gw, chat_body("metered", max_tokens=5))
        usage = r.json()["usage"]
        completion_tokens += usage["completion_tokens"]
        prompt_tokens += usage["prompt_tokens"]
    streamed = b"".join(c for _, c in stream_chunks(
        f"{gw.url}/v1/chat/completions",
        chat_body("metered", max_tokens=6, stream=True, stream_options={"include_usage": True}),
        headers=gw.headers))
    stream_usage = [json.loads(line[6:])["usage"] for line in streamed.split(b"\n")
                    if line.startswith(b"data: {") and b'"usage"' in line][-1]
    completion_tokens += stream_usage["completion_tokens"]
    prompt_tokens += stream_usage["prompt_tokens"]
    post(gw, chat_body("nothing-here"))
    m = gw.metrics()
    assert count(m, "gpufleet_gateway_requests_total", deployment="metered", status="200") == 5
    assert count(m, "gpufleet_gateway_request_duration_seconds_count", deployment="metered") == 5
    assert count(m, "gpufleet_gateway_time_to_first_token_seconds_count", deployment="metered") == 1
    assert count(m, "gpufleet_gateway_tokens_total", deployment="metered", kind="completion") == completion_tokens
    assert count(m, "gpufleet_gateway_tokens_total", deployment="metered", kind="prompt") == prompt_tokens
    assert count(m, "gpufleet_gateway_in_flight_requests", deployment="metered") == 0
    assert count(m, "gpufleet_gateway_errors_total", deployment="(unknown)", code="model_not_found") >= 1
    assert count(m, "gpufleet_instances", deployment="metered", state="RUNNING") == 2
    assert count(m, "gpufleet_instance_restarts", deployment="metered") == 0
    assert count(m, "gpufleet_gpu_memory_total_bytes", worker="w1", gpu="0") == 16 * (1 << 30)
    assert ("gpufleet_gpu_memory_claimed_bytes", (("gpu", "0"), ("worker", "w1"))) in m
    assert count(m, "gpufleet_http_requests_total", route="/v1/chat/completions", status="200") >= 5
    for iid in ids:
        assert count(m, "gpufleet_gateway_requests_total", replica=gw.instance_name(iid)) >= 1


def test_gateway_process_reads_the_table_from_the_server(gw: GatewayServer, backends: list[LlamaServer]) -> None:
    """A `gpufleet gateway` app (its table from GET /v1/gateway/routes) routes like the server's,
    and sees a replica marked for removal leave its table within a refresh. It takes the server's
    keys (asking GET /v1/whoami): none is 401, a scoped key is 403 elsewhere, a removed key stops
    working once the gateway's short cache expires."""
    from gpufleet.gateway import remote_auth
    import uvicorn

    from gpufleet.gateway.settings import GatewaySettings
    from gpufleet.gateway.standalone import create_gateway_app
    from tests.support.servers import free_port

    ids = deploy_running(gw, "apart", backends[:2])
    port = free_port()
    app = create_gateway_app(gw.url, GatewaySettings(refresh_s=0.2, wait_s=1.0), headers=gw.headers)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{base}/health", timeout=5).json()["status"] == "ok"
        for _ in range(4):
            r = httpx.post(f"{base}/v1/chat/completions", json=chat_body("apart"), headers=gw.headers, timeout=60)
            assert r.status_code == 200, r.text
        gw.mark_deleting(ids[0])
        # the server's table (0.2 s) and then this gateway's (0.2 s) are re-read while requests come
        deadline = time.monotonic() + 10
        while ids[0] in [r.instance for r in app.state.gateway.cache.current.routes["apart"].replicas]:
            assert time.monotonic() < deadline, "the gateway process never dropped the replica being removed"
            httpx.get(f"{base}/v1/models", headers=gw.headers, timeout=5)
            time.sleep(0.1)
        for _ in range(3):
            assert httpx.post(f"{base}/v1/chat/completions", json=chat_body("apart"), headers=gw.headers,
                              timeout=60).status_code == 200
        text = httpx.get(f"{base}/metrics", headers=gw.headers, timeout=5).text
        from prometheus_client.parser import text_string_to_metric_families
        sent = {s.labels["replica"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "gpufleet_gateway_requests_total" and s.labels["deployment"] == "apart"}
        assert sent == {gw.instance_name(ids[0]): 2.0, gw.instance_name(ids[1]): 5.0}, sent
        assert httpx.post(f"{base}/v1/chat/completions", json=chat_body("nope"), headers=gw.headers,
                          timeout=60).status_code == 404
        # keys, checked by the server
        none = httpx.post(f"{base}/v1/chat/completions", json=chat_body("apart"), timeout=10)
        assert none.status_code == 401 and none.json()["error"]["type"] == "authentication_error", none.text
        scoped_key = gw.key("apart-only", "inference", ("other",))
        scoped = {"Authorization": f"Bearer {scoped_key}"}
        refused = httpx.post(f"{base}/v1/chat/completions", json=chat_body("apart"), headers=scoped, timeout=10)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
        allowed = {"Authorization": f"Bearer {gw.key('apart-too', 'inference', ('apart',))}"}
        assert httpx.post(f"{base}/v1/chat/completions", json=chat_body("apart"), headers=allowed,
                          timeout=60).status_code == 200
        assert httpx.delete(f"{gw.url}/v1/keys/apart-too", headers=gw.headers, timeout=10).status_code == 200
        deadline = time.monotonic() + remote_auth.TTL_S + 5
        while httpx.post(f"{base}/v1/chat/completions", json=chat_body("apart"), headers=allowed,
                         timeout=60).status_code != 401:
            assert time.monotonic() < deadline, "a removed key still works at the gateway process"
            time.sleep(0.5)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
