"""Where a gpufleet process finds its API key, and how secrets are written to disk.

The CLI, ``gpufleet.client.GpufleetClient`` and the Prefect tasks read the key from
``GPUFLEET_API_KEY``, else from ``<gpufleet home>/credentials`` (JSON ``{"api_key": ...}``),
which ``gpufleet server``/``up`` write on first start. A file that others could read is
refused, saying how to fix it: a key readable by every local user is everyone's key.
Authentication itself is on unless ``GPUFLEET_AUTH=off`` (or ``--no-auth``).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from gpufleet.settings import home

API_KEY_ENV = "GPUFLEET_API_KEY"
AUTH_ENV = "GPUFLEET_AUTH"
FILE_NAME = "credentials"


class CredentialsError(RuntimeError):
    """A credentials file exists but cannot be used (its permissions, its content)."""


def auth_enabled() -> bool:
    """False only when GPUFLEET_AUTH says off (off, false, 0, no)."""
    return os.environ.get(AUTH_ENV, "on").strip().lower() not in ("off", "false", "0", "no")


def credentials_path() -> Path:
    return home() / FILE_NAME


def read_private_json(path: Path) -> dict[str, str] | None:
    """A 0600 JSON file's content; None when it does not exist. Wider permissions are refused."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(f"{path} is readable by other users (mode {stat.S_IMODE(info.st_mode):o}); "
                               f"a key there is not private. Fix it with: chmod 600 {path}")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise CredentialsError(f"{path} is not JSON ({exc}); remove it or write {{\"api_key\": \"gf_…\"}}") from exc
    if not isinstance(data, dict):
        raise CredentialsError(f"{path} must hold a JSON object like {{\"api_key\": \"gf_…\"}}")
    return data


def write_private_json(path: Path, data: dict[str, str]) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the first byte (never briefly readable),
    replacing the file at once (a reader sees the old or the new content, not half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (json.dumps(data, indent=1) + "\n").encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def api_key() -> str | None:
    """GPUFLEET_API_KEY, else the credentials file's key, else None."""
    from_env = os.environ.get(API_KEY_ENV, "").strip()
    if from_env:
        return from_env
    data = read_private_json(credentials_path())
    key = (data or {}).get("api_key")
    return str(key) if key else None
