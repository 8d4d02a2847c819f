"""More faults under the real cluster (tests/faults/conftest.py): a backend killed by the
kernel's OOM killer (a memory cgroup limit), each case asserting what the user sees and that
nothing was lost."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpufleet.node import oom
from tests.e2e.conftest import chat, wait_until
from tests.faults.conftest import FaultCluster
from tests.faults.test_faults import nothing_lost, running

pytestmark = [pytest.mark.faults]


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    """A child memory cgroup of this process's own (we are root); skipped where none can be made."""
    own = oom.memory_cgroup(os.getpid())
    if own is None:
        pytest.skip("no memory cgroup readable here")
    child = own / f"gpufleet-oom-{uuid.uuid4().hex[:8]}"
    try:
        child.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup under {own}: {exc}")
    try:
        yield child
    finally:
        for _ in range(50):
            try:
                child.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_backend_oom_killed_by_the_kernel_says_oom(faults_cluster: FaultCluster, tiny_gguf: Path,
                                                  memory_cgroup: Path, figures: dict[str, Any]) -> None:
    """The backend is moved into a memory cgroup whose limit it exceeds with its next pages: the
    kernel kills it (SIGKILL), supervision sees the cgroup's OOM-kill count grow and says OOM."""
    c = faults_cluster
    c.cli("deploy", "--name", "oomed", "--local-path", str(tiny_gguf))
    first = running(c, "oomed")
    time.sleep(1.5)  # one supervision round sees it alive in its cgroup; the next must see the move
    limit = "memory.max" if (memory_cgroup / "memory.max").exists() else "memory.limit_in_bytes"
    (memory_cgroup / limit).write_text(str(64 * 1024))
    (memory_cgroup / "cgroup.procs").write_text(str(first["pid"]))
    time.sleep(1.5)  # supervision notes the new cgroup and its count (0)
    t_kill = time.time()
    for _ in range(20):  # a request makes it touch new pages; the kernel kills it on the first ones
        try:
            httpx.post(f"http://127.0.0.1:{first['port']}/v1/chat/completions", timeout=2,
                       json={"messages": [{"role": "user", "content": "hello " * 200}], "max_tokens": 8})
        except httpx.HTTPError:
            pass
        if (oom.oom_kills(memory_cgroup) or 0) > 0:
            break
        time.sleep(0.1)
    assert (oom.oom_kills(memory_cgroup) or 0) > 0, "the kernel did not OOM-kill the backend"
    err = wait_until(lambda: next((i for i in c.api_instances("oomed") if i["state"] == "ERROR"), None),
                     timeout=10, interval=0.02, what="ERROR after the OOM kill")
    t_error = time.time()
    assert "OOM: killed by the kernel for running out of memory" in err["state_message"], err["state_message"]
    assert "killed by SIGKILL" in err["state_message"]
    back = running(c, "oomed", restart_count=1)  # restarted at once, outside that cgroup
    assert back["id"] == first["id"] and chat(back["port"])
    nothing_lost(c, "oomed", first["id"])
    figures["backend_oom_kill"] = {"kill_to_error_s": round(t_error - t_kill, 2),
                                   "message": err["state_message"].splitlines()[0][:200],
                                   "lost": "0 deployments, 0 instances, 0 log runs"}
    c.cli("rm", "oomed")
