"""`gpufleet up`'s guard (one cluster per home and port) and supervisor (restart with backoff),
on real processes, sockets and locks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpufleet.cli import up_guard
from gpufleet.cli.embedded import _spawn, stop_children
from gpufleet.cli.supervise import GaveUp, RestartPolicy, Supervisor


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _wait_exit(child, timeout: float = 10) -> None:  # noqa: ANN001
    child.proc.wait(timeout)


def test_a_child_that_dies_is_restarted_with_growing_delays_then_given_up(tmp_path: Path) -> None:
    child = _spawn("flaky", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"], dict(os.environ), tmp_path)
    said: list[str] = []
    clock = FakeClock()
    sup = Supervisor([child], said.append, RestartPolicy(first_delay=1, max_delay=3, max_restarts=3), clock)
    delays = []
    for _ in range(3):
        _wait_exit(child)
        sup.check()
        assert "flaky exited with code 3" in said[-1] and "its last log line: boom" in said[-1], said
        delays.append(float(said[-1].split("restarting it in ")[1].split(" s")[0]))
        clock.now += 0.5
        sup.check()  # not due yet
        assert "restarted" not in said[-1]
        clock.now += 10
        sup.check()
        assert said[-1].startswith("restarted flaky (pid ")
    assert delays == [1, 2, 3]  # 1, 2, 4 capped at 3
    assert sup.restarts("flaky") == 3
    _wait_exit(child)
    with pytest.raises(GaveUp, match=r"flaky exited with code 3 4 times in a row.*giving up"):
        sup.check()
    assert child.log.read_text().count("restarted by gpufleet up") == 3


def test_a_child_that_ran_long_enough_starts_its_count_again(tmp_path: Path) -> None:
    child = _spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ), tmp_path)
    said: list[str] = []
    clock = FakeClock()
    sup = Supervisor([child], said.append, RestartPolicy(first_delay=1, max_restarts=1, stable_after=30), clock)
    try:
        for _ in range(3):  # with max_restarts=1, a second quick death would give up
            first = child.proc.pid
            clock.now += 31  # it ran "long enough"
            child.proc.kill()
            _wait_exit(child)
            sup.check()
            assert "(try 1 of 1)" in said[-1], said
            clock.now += 1
            sup.check()
            assert child.proc.pid != first and child.proc.poll() is None
    finally:
        stop_children([child], grace=2)


def test_a_second_up_of_the_same_home_is_refused_naming_the_first(tmp_path: Path) -> None:
    home = tmp_path / "home"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from gpufleet.cli.up_guard import claim\n"
         f"claim(Path({str(home)!r}), 1, 2); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        record = up_guard.UpRecord.model_validate_json((home / "up.json").read_text())
        assert record.pid == holder.pid
        with pytest.raises(up_guard.AlreadyRunning) as err:
            up_guard.claim(home, 3, 4)
        # the holder's cmdline is no `gpufleet up`: the lock still stops us, and we say who may hold it
        assert str(home / "up.lock") in str(err.value) and "gpufleet down" in str(err.value)
        assert (home / "up.json").exists()  # the refused claim touched nothing of the first
    finally:
        holder.kill()
        holder.wait()
    held = up_guard.claim(home, 3, 4)  # the kernel dropped the dead holder's lock
    assert up_guard.UpRecord.model_validate_json((home / "up.json").read_text()).pid == os.getpid()
    held.release()
    assert not (home / "up.json").exists()


def test_a_port_in_use_is_refused_naming_its_process(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert up_guard.listening_pid(port) == os.getpid()
        with pytest.raises(up_guard.AlreadyRunning, match=rf"port {port} \(--prefect-port\) is already in use by pid {os.getpid()}"):
            up_guard.claim(tmp_path / "home", _free_port(), port)
    assert not (tmp_path / "home" / "up.json").exists()
    up_guard.claim(tmp_path / "home", _free_port(), port).release()  # free again


def test_down_finds_only_a_live_gpufleet_up(tmp_path: Path) -> None:
    """A stale up.json (its pid gone, or reused by another program) is no running cluster."""
    home = tmp_path / "home"
    home.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (home / "up.json").write_text(up_guard.UpRecord(pid=other.pid, home=str(home), port=1, prefect_port=2,
                                                        started_at=time.time()).model_dump_json())
        assert up_guard.signal_up(home, signal.SIGTERM) is None
        assert other.poll() is None  # not signalled: it is not a `gpufleet up`
    finally:
        other.kill()
        other.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
