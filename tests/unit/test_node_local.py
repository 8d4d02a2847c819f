"""Node-local pieces on real files and processes: log tails, the backend registry, process control."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from gpufleet.node import processes
from gpufleet.node.logs import read_log, tail_lines
from gpufleet.node.registry import BackendRecord, BackendRegistry


def test_tail_lines_reads_backwards(tmp_path: Path) -> None:
    f = tmp_path / "x.log"
    f.write_text("".join(f"line {i}\n" for i in range(100_000)))
    assert tail_lines(f, 3) == ["line 99997\n", "line 99998\n", "line 99999\n"]
    assert tail_lines(f, 0) == []
    assert len(tail_lines(f, 10**6)) == 100_000


def test_read_log_follow_stops_when_told(tmp_path: Path) -> None:
    f = tmp_path / "x.log"
    f.write_text("a\n")
    calls = {"n": 0}

    def keep_going() -> bool:
        calls["n"] += 1
        if calls["n"] == 1:
            f.write_text("a\nb\n")
            return True
        return False

    out = "".join(read_log(f, tail=None, follow=True, keep_going=keep_going, poll=0.01))
    assert out == "a\nb\n"


def test_registry_round_trip(tmp_path: Path) -> None:
    reg = BackendRegistry(tmp_path / "b")
    rec = BackendRecord(instance_id=7, instance_name="x-7", pid=1, start_time=2, port=40001,
                        log_path="/l", command=["a"])
    reg.save(rec)
    (tmp_path / "b" / "junk.json").write_text("{not json")
    assert reg.get(7) == rec
    assert reg.all() == [rec]
    assert reg.used_ports() == {40001}
    rpc = rec.model_copy(update={"role": "rpc", "gpu_index": 1, "port": 40002})
    reg.save(rpc)
    assert reg.get(7) == rec and reg.get_rpc(7, 1) == rpc  # one file each: the server and the GPU 1 RPC server
    assert reg.of_instance(7) == [rec, rpc] and reg.of_instance(8) == []
    assert reg.used_ports() == {40001, 40002}
    reg.remove(rec)
    assert reg.get(7) is None and reg.all() == [rpc]


def test_spawn_is_alive_terminate(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    pid, start = processes.spawn([sys.executable, "-c", "print('hello', flush=True); import time; time.sleep(60)"],
                                 {}, log, tmp_path)
    assert processes.is_alive(pid, start)
    assert not processes.is_alive(pid, start + 1)  # same pid, other start time: not ours
    deadline = time.monotonic() + 10
    while "hello" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "hello" in log.read_text()
    assert processes.terminate(pid, start, grace=5)
    assert not processes.is_alive(pid, start)
    assert processes.terminate(pid, start) is False  # already gone


def test_terminate_escalates_to_sigkill(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('x', flush=True); time.sleep(60)"
    log = tmp_path / "p.log"
    pid, start = processes.spawn([sys.executable, "-c", code], {}, log, tmp_path)
    deadline = time.monotonic() + 10
    while "x" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    t = time.monotonic()
    assert processes.terminate(pid, start, grace=0.5)
    assert not processes.is_alive(pid, start)
    assert time.monotonic() - t < 5


def test_allocate_port_skips_taken(tmp_path: Path) -> None:
    port = processes.allocate_port("127.0.0.1", taken={40000, 40001}, port_range=(40000, 40100), claims=tmp_path)
    assert port >= 40002


def test_two_agents_on_one_host_never_get_the_same_port(tmp_path: Path) -> None:
    # Neither port is bound yet (the backends are still starting): the claim is what separates them.
    first = processes.allocate_port("127.0.0.1", taken=set(), port_range=(40500, 40600), claims=tmp_path)
    second = processes.allocate_port("127.0.0.1", taken=set(), port_range=(40500, 40600), claims=tmp_path)
    assert first != second


def test_a_stale_claim_is_reused(tmp_path: Path) -> None:
    first = processes.allocate_port("127.0.0.1", taken=set(), port_range=(40600, 40700), claims=tmp_path)
    old = time.time() - processes.PORT_CLAIM_S - 1  # claimed more than PORT_CLAIM_S ago, never bound
    os.utime(tmp_path / f"127.0.0.1-{first}", (old, old))
    assert processes.allocate_port("127.0.0.1", taken=set(), port_range=(40600, 40700), claims=tmp_path) == first
