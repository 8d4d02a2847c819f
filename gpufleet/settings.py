"""Settings shared by gpufleet's processes, from the environment (GPUFLEET_*)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_PORT = 8470


def home() -> Path:
    """Where gpufleet keeps its database, Prefect home, node state and logs."""
    path = Path(os.environ.get("GPUFLEET_HOME", Path.home() / ".gpufleet")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_url() -> str:
    return os.environ.get("GPUFLEET_DATABASE_URL") or f"sqlite:///{home() / 'gpufleet.db'}"


HEARTBEAT_INTERVAL_S = float(os.environ.get("GPUFLEET_HEARTBEAT_INTERVAL", "5"))
WORKER_TIMEOUT_S = float(os.environ.get("GPUFLEET_WORKER_TIMEOUT", str(4 * HEARTBEAT_INTERVAL_S)))
