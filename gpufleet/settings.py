"""Settings shared by gpufleet's processes, from the environment (GPUFLEET_*)."""

from __future__ import annotations

import os
from pathlib import Path

from gpufleet.core.plan import Timing

DEFAULT_PORT = 8470


def home() -> Path:
    """Where gpufleet keeps its database, Prefect home, node state and logs."""
    path = Path(os.environ.get("GPUFLEET_HOME", Path.home() / ".gpufleet")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_url() -> str:
    return os.environ.get("GPUFLEET_DATABASE_URL") or f"sqlite:///{home() / 'gpufleet.db'}"


#: Runs of a backend whose logs a node keeps besides the current one (gpufleet.node.run_logs).
KEEP_PREVIOUS_LOGS = 3

HEARTBEAT_INTERVAL_S = float(os.environ.get("GPUFLEET_HEARTBEAT_INTERVAL", "5"))
WORKER_TIMEOUT_S = float(os.environ.get("GPUFLEET_WORKER_TIMEOUT", str(4 * HEARTBEAT_INTERVAL_S)))


def env_number(name: str, default: float, *, positive: bool) -> float:
    """A number from the environment (``default`` when unset); ``positive``: > 0, else >= 0.
    A bad value is an error naming the variable, never a silent default."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    bound = "> 0" if positive else ">= 0"
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number {bound}, got {raw!r}") from None
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a number {bound}, got {raw!r}")
    return value


def time_scale() -> float:
    """``GPUFLEET_TIME_SCALE`` compresses the lifecycle clock (restart back-off, stable window,
    lost-worker grace): 0.01 runs the real schedule a hundred times faster, so tests assert it
    without sleeping minutes. 1 in production."""
    return env_number("GPUFLEET_TIME_SCALE", 1.0, positive=True)


def plan_timing() -> Timing:
    """The plan's durations: ``GPUFLEET_RESTART_STABLE_WINDOW`` (s, default 600) and
    ``GPUFLEET_LOST_WORKER_GRACE`` (s, default 300), then everything × the time scale."""
    base = Timing()
    configured = Timing(stable_window_s=env_number("GPUFLEET_RESTART_STABLE_WINDOW", base.stable_window_s, positive=False),
                        lost_grace_s=env_number("GPUFLEET_LOST_WORKER_GRACE", base.lost_grace_s, positive=False))
    return configured.scaled(time_scale())
