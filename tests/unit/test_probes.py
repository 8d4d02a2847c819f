"""Liveness probes: a backend that lives but no longer answers is found after N probes."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from gpufleet.node.probes import Prober, probe
from gpufleet.node.registry import BackendRecord


def record(port: int, pid: int = 100) -> BackendRecord:
    return BackendRecord(instance_id=1, instance_name="m-1", pid=pid, start_time=1, port=port, log_path="/x.log",
                         command=["llama-server"], healthy_path="/health")


def test_three_failures_in_a_row() -> None:
    p = Prober(failures=3)
    r = record(1)
    assert p.observe(r, "no answer") is None
    assert p.observe(r, None) is None  # an answer starts the count over
    assert p.observe(r, "no answer") is None and p.observe(r, "HTTP 503") is None
    assert p.observe(r, "no answer within 2 s") == ["no answer", "HTTP 503", "no answer within 2 s"]
    assert p.observe(record(1, pid=200), "no answer") is None  # a relaunched backend starts over
    p.forget(set())
    assert p.observe(r, "x") is None


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_probe_outcomes() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert probe(record(server.server_port), "127.0.0.1") is None
        assert probe(record(server.server_port).model_copy(update={"healthy_path": "/v1/models"}),
                     "127.0.0.1") == "HTTP 503"
    finally:
        server.shutdown()
    with socket.socket() as hung:  # listens (the kernel accepts) but nobody answers: a stopped process
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        assert probe(record(hung.getsockname()[1]), "127.0.0.1", timeout=0.2) == "no answer within 0.2 s"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert probe(record(closed), "127.0.0.1").startswith("ConnectError")
