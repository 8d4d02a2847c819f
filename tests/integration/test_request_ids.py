"""Issue 17: requests mean what they report. On the real app behind a real HTTP server (so that
client timeouts are real): a timeout says the request may still be applied; a retried request
id is applied once and answered as the first time; a request issued earlier that arrives later
never undoes a newer one."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import uvicorn

from gpufleet.client import ISSUED_AT, REQUEST_ID, ApiError, GpufleetClient, ServerTimeout, ServerUnavailable
from gpufleet.server.app import create_app

GiB = 1 << 30


@dataclass
class SlowTrigger:
    """Starts no flow, but like Prefect under load it may take a while to answer."""

    delay: float = 0.0
    fail: bool = False
    calls: list[tuple[str, dict]] = field(default_factory=list)

    def __call__(self, operation: str, parameters: dict) -> str:
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("Prefect is down")
        self.calls.append((operation, parameters))
        return f"run-{len(self.calls)}"


@dataclass
class Api:
    url: str
    trigger: SlowTrigger

    def replicas(self, name: str = "t") -> int:
        return httpx.get(f"{self.url}/v1/deployments/{name}").json()["replicas"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def api(database_url: str, tiny_gguf: Path) -> Iterator[Api]:
    trigger = SlowTrigger()
    app = create_app(database_url, trigger=trigger, run_controller=False, auth=False)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    r = httpx.post(f"{url}/v1/workers", json={"name": "cpu", "address": "http://127.0.0.1:1", "cpu_count": 4,
                                              "memory_total": 32 * GiB, "work_queue": "node-cpu",
                                              "engines": [{"engine": "llama.cpp", "version": "b11434",
                                                           "devices": ["cpu"], "default": True}]})
    assert r.status_code == 200, r.text
    r = httpx.post(f"{url}/v1/deployments", json={"name": "t", "replicas": 1,
                                                  "source": {"local_path": str(tiny_gguf)}})
    assert r.status_code == 202, r.text
    trigger.calls.clear()
    try:
        yield Api(url, trigger)
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_timeout_says_the_request_may_still_be_applied(api: Api) -> None:
    api.trigger.delay = 1.5
    with GpufleetClient(api.url, timeout=0.5, retries=0) as c, pytest.raises(ServerTimeout) as err:
        c.scale("t", 2)
    assert (f"did not answer POST /v1/deployments/t/scale within 0.5 s; the request may still be applied — "
            "check `gpufleet ls`") in str(err.value)
    assert api.replicas() == 2  # and so it was
    # a server that is not there is reported as such: nothing was applied
    with GpufleetClient(f"http://127.0.0.1:{_free_port()}", retries=0) as c, pytest.raises(ServerUnavailable) as gone:
        c.scale("t", 3)
    assert not isinstance(gone.value, ServerTimeout) and "cannot reach the gpufleet server" in str(gone.value)


def test_a_retried_request_is_applied_once(api: Api) -> None:
    headers = {REQUEST_ID: "req-1", ISSUED_AT: datetime.now(timezone.utc).isoformat()}
    first = httpx.post(f"{api.url}/v1/deployments/t/scale", json={"replicas": 3}, headers=headers)
    assert first.status_code == 202, first.text
    again = httpx.post(f"{api.url}/v1/deployments/t/scale", json={"replicas": 3}, headers=headers)
    assert again.status_code == 202 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert [op for op, _ in api.trigger.calls] == ["scale"]  # one flow run, not two
    # the same id for another operation is a client bug: refused
    other = httpx.delete(f"{api.url}/v1/deployments/t", headers=headers)
    assert other.status_code == 422 and "already used for POST /v1/deployments/t/scale" in other.text
    assert httpx.post(f"{api.url}/v1/deployments/t/scale", json={"replicas": 3},
                      headers={REQUEST_ID: "no spaces allowed"}).status_code == 400


def test_a_client_retrying_a_timed_out_request_gets_the_first_answer(api: Api) -> None:
    """The first try outlives the client's timeout; the retries (same id) are told it is still being
    applied (409, Retry-After), then get its answer. The flow run is started once."""
    api.trigger.delay = 1.2
    with GpufleetClient(api.url, timeout=0.4, retries=6) as c:
        op = c.scale("t", 4)
    assert op.flow_run_id == "run-1" and len(api.trigger.calls) == 1 and api.replicas() == 4


def test_a_failed_request_is_not_kept_so_its_retry_applies_it(api: Api) -> None:
    api.trigger.fail = True
    headers = {REQUEST_ID: "req-2"}
    assert httpx.post(f"{api.url}/v1/deployments/t/scale", json={"replicas": 2}, headers=headers).status_code == 503
    api.trigger.fail = False
    r = httpx.post(f"{api.url}/v1/deployments/t/scale", json={"replicas": 2}, headers=headers)
    assert r.status_code == 202 and "Idempotent-Replayed" not in r.headers and len(api.trigger.calls) == 1


def test_a_later_request_wins_over_an_earlier_one_that_arrives_late(api: Api) -> None:
    now = datetime.now(timezone.utc)
    with GpufleetClient(api.url) as c:
        c.scale("t", 5, issued_at=now)
        with pytest.raises(ApiError) as late:
            c.scale("t", 3, issued_at=now - timedelta(seconds=2))  # asked for earlier, arrives later
        assert late.value.status == 412 and "arrived late and was not applied" in late.value.detail
        assert api.replicas() == 5
        # the flow run of the newer scale carries its issue time, so that its own recording is ordered too
        assert api.trigger.calls[-1][1] == {"name": "t", "replicas": 5, "issued_at": now.isoformat()}
        c.scale("t", 1)  # issued now: later than both
        assert api.replicas() == 1
    # the configuration the same way
    edit = f"{api.url}/v1/deployments/t"
    newer = httpx.patch(edit, json={"env": {"A": "new"}}, headers={ISSUED_AT: now.isoformat()})
    older = httpx.patch(edit, json={"env": {"A": "old"}},
                        headers={ISSUED_AT: (now - timedelta(seconds=1)).isoformat()})
    assert newer.status_code == 200 and older.status_code == 412, older.text
    assert httpx.get(edit).json()["env"] == {"A": "new"}
    bad = httpx.patch(edit, json={"env": {"A": "x"}}, headers={ISSUED_AT: "yesterday"})
    assert bad.status_code == 400 and "Gpufleet-Issued-At" in bad.text
