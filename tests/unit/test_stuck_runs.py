"""Which control runs a starting gpufleet server takes for orphaned (gpufleet.server.stuck_runs)."""

from __future__ import annotations

import os
import socket
import subprocess

from gpufleet.server.stuck_runs import process_gone


def test_a_dead_process_of_this_host_is_gone_a_live_one_or_another_host_is_not() -> None:
    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert process_gone(f"{host}:{dead.pid}:run")
    assert not process_gone(f"{host}:{os.getpid()}:run")  # this server itself
    assert not process_gone(f"{host}:1:run")  # alive
    assert not process_gone(f"other-host:{dead.pid}:run")  # another server may run it
    assert process_gone(None)  # no worker recorded: orphaned
    assert not process_gone("1234:run")  # an identifier of another kind of worker
