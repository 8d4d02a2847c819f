"""One `gpufleet up` per home and per port.

Why: a second `gpufleet up` with the same home or ports used to pass its health checks
against the servers already running, start a second node that adopted (and on its way
out killed) the first cluster's backends, and delete the first one's pid file. So before
it starts anything, `up` takes an exclusive lock on its home (`<home>/up.lock`, an
``flock`` that the kernel releases when the process dies, so a crashed `up` never blocks
the next one) and checks that its ports are free; when they are not it names the
`gpufleet up` that holds them, found through /proc, and how to stop it.

`<home>/up.json` says which `up` holds the home (pid, ports): `gpufleet down` reads it.
It is written before the first child starts and removed only by the `up` that holds the
lock, so `down` always finds a running `up`, even one still starting.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

LOCK_FILE = "up.lock"
STATE_FILE = "up.json"


class AlreadyRunning(RuntimeError):
    """Another cluster holds this home or one of these ports; the message says which and how to stop it."""


class UpRecord(BaseModel):
    """What `<home>/up.json` says about the `gpufleet up` holding the home."""

    pid: int
    home: str
    port: int
    prefect_port: int | None  # None: Prefect runs elsewhere (PREFECT_API_URL)
    started_at: float


@dataclass
class HomeClaim:
    """This process's hold on a home; `release()` (or the process's death) frees it."""

    home: Path
    record: UpRecord
    _lock_fd: int

    def release(self) -> None:
        (self.home / STATE_FILE).unlink(missing_ok=True)
        os.close(self._lock_fd)  # closing the descriptor drops the flock


def claim(home: Path, port: int, prefect_port: int | None) -> HomeClaim:
    """Hold `home` for this `gpufleet up`, after checking its ports; raises AlreadyRunning."""
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(_home_taken_message(home)) from None
    try:
        for p, what in ((port, "--port"), (prefect_port, "--prefect-port")):
            if p is not None and port_in_use(p):
                raise AlreadyRunning(_port_taken_message(p, what))
        record = UpRecord(pid=os.getpid(), home=str(home), port=port, prefect_port=prefect_port,
                          started_at=time.time())
        tmp = home / f"{STATE_FILE}.tmp"
        tmp.write_text(record.model_dump_json())
        tmp.replace(home / STATE_FILE)
    except BaseException:
        os.close(fd)
        raise
    return HomeClaim(home, record, fd)


def read_record(home: Path) -> UpRecord | None:
    """The running `up` of this home, or None (no record, or its process is gone or is no `gpufleet up`)."""
    try:
        record = UpRecord.model_validate_json((home / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return record if is_gpufleet_up(record.pid) else None


def down_command(home: str) -> str:
    default = Path.home() / ".gpufleet"
    same = Path(home).resolve() == default.resolve() and "GPUFLEET_HOME" not in os.environ
    return "gpufleet down" if same else f"GPUFLEET_HOME={home} gpufleet down"


def _home_taken_message(home: Path) -> str:
    record = read_record(home)
    if record is None:
        return (f"another `gpufleet up` is starting or stopping with home {home} (it holds {home / LOCK_FILE}); "
                f"wait for it, or stop it with `{down_command(str(home))}`")
    return (f"a gpufleet cluster is already running with home {home}: `gpufleet up` pid {record.pid}, "
            f"{_ports(record)}. Use it as it is (`gpufleet ls`), or stop it first with "
            f"`{down_command(record.home)}`; for a second cluster give another GPUFLEET_HOME and other ports")


def _ports(record: UpRecord) -> str:
    ports = f"gpufleet API on port {record.port}"
    if record.prefect_port is not None:
        ports += f", Prefect on port {record.prefect_port}"
    return ports


def _port_taken_message(port: int, option: str) -> str:
    holder = listening_pid(port)
    up_pid = _gpufleet_up_ancestor(holder) if holder is not None else None
    if up_pid is not None:
        up_home = _process_home(up_pid)
        record = read_record(Path(up_home)) if up_home else None
        detail = f", {_ports(record)}" if record is not None else ""
        return (f"port {port} ({option}) is taken by a running gpufleet cluster: `gpufleet up` pid {up_pid}, "
                f"home {up_home}{detail}. Use it as it is, or stop it first with `{down_command(up_home)}`; "
                f"for a second cluster give other ports ({option}) and another GPUFLEET_HOME")
    if holder is None:
        return f"port {port} ({option}) is already in use by another program; choose another {option}"
    args = _cmdline(holder)
    who = f"pid {holder} ({' '.join(args)[:160]})"
    if "gpufleet.cli.main" in args or "prefect" in " ".join(args[:4]):
        return (f"port {port} ({option}) is held by {who}, left running by a `gpufleet up` that is gone "
                f"(killed?); stop it with `kill {holder}`, or choose another {option}")
    return f"port {port} ({option}) is already in use by {who}; choose another {option}"


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def listening_pid(port: int) -> int | None:
    """The process listening on TCP `port` (from /proc/net/tcp{,6} and the processes' sockets),
    or None when it is not visible to this user."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:  # gone meanwhile, or not ours to read
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    return int(proc.name)
            except OSError:  # that descriptor closed meanwhile: the process's others still count
                continue
    return None


def _cmdline(pid: int) -> list[str]:
    try:
        return [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if a]
    except OSError:
        return []


def is_gpufleet_up(pid: int) -> bool:
    """True when `pid` runs `gpufleet up` (`gpufleet up …` or `python -m gpufleet.cli.main up …`)."""
    args = _cmdline(pid)
    for i, arg in enumerate(args[:-1]):
        if (arg == "gpufleet.cli.main" or os.path.basename(arg) == "gpufleet") and args[i + 1] == "up":
            return True
    return False


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    ppid = int(stat.rsplit(")", 1)[1].split()[1])
    return ppid or None


def _gpufleet_up_ancestor(pid: int | None) -> int | None:
    """`pid` or the nearest of its ancestors that is a `gpufleet up` (its children run in their own
    sessions, but stay its children)."""
    while pid is not None and pid > 1:
        if is_gpufleet_up(pid):
            return pid
        pid = _parent(pid)
    return None


def _process_home(pid: int) -> str:
    """The gpufleet home of a running process: its GPUFLEET_HOME, else ~/.gpufleet of its HOME."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return "(unknown home)"
    env = dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
    if env.get("GPUFLEET_HOME"):
        return env["GPUFLEET_HOME"]
    return str(Path(env.get("HOME", str(Path.home()))) / ".gpufleet")


def signal_up(home: Path, sig: int) -> UpRecord | None:
    """`gpufleet down`: send `sig` to the `up` holding `home`; its record, or None when none runs."""
    record = read_record(home)
    if record is None:
        return None
    try:
        os.kill(record.pid, sig)
    except ProcessLookupError:
        return None
    return record
