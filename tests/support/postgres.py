"""A throw-away PostgreSQL server on 127.0.0.1 for tests (Debian's postgresql package)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    pass


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path:
        return path
    raise PostgresUnavailable(
        f"PostgreSQL's {name} not found; install it with `apt-get install -y postgresql` "
        "(scripts/test.sh does this)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(args: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextmanager
def temporary_postgres() -> Iterator[str]:
    """Yield the SQLAlchemy URL of a fresh server; stop and remove it afterwards."""
    external = os.environ.get("GPUFLEET_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    base = Path(tempfile.mkdtemp(prefix="gpufleet-pg-"))
    data = base / "data"
    port = _free_port()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    subprocess.run(_as_postgres([_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
                   check=True, capture_output=True)
    ctl = _bin("pg_ctl")
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off"
    subprocess.run(_as_postgres([ctl, "-D", str(data), "-l", str(base / "pg.log"), "-o", opts, "-w", "start"]),
                   check=True, capture_output=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = subprocess.run([_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                "-c", "create database gpufleet_test"], capture_output=True)
            if r.returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise PostgresUnavailable(f"PostgreSQL did not come up: {(base / 'pg.log').read_text()}")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/gpufleet_test"
    finally:
        subprocess.run(_as_postgres([ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
