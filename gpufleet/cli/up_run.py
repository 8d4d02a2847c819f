"""The life of one `gpufleet up`: claim the home and ports, start the cluster, supervise it,
stop it on Ctrl-C / SIGTERM / `gpufleet down`.

Why a module of its own: the order matters and is easy to get wrong. The home is claimed
before anything starts (so a second `up` touches nothing of the first); the signal handlers
are installed before the first child starts (so a `gpufleet down` during start-up stops the
children that already run instead of orphaning them); the claim is released last.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

from gpufleet.cli.embedded import StartFailed, start_cluster
from gpufleet.cli.output import console, err_console
from gpufleet.cli.supervise import GaveUp, Supervisor
from gpufleet.cli.up_guard import AlreadyRunning, claim
from gpufleet.settings import home


class _Interrupted(Exception):
    """Raised by the signal handler while the cluster is starting."""


def _say(message: str) -> None:
    console.print(message, highlight=False, soft_wrap=True)


def _warn(message: str) -> None:
    err_console.print(message, highlight=False, soft_wrap=True)


def run_up(port: int, prefect_port: int, node_name: str, virtual_gpus: str | None,
           demo: Callable[[], object] | None) -> int:
    """Returns the exit code: 0 after a requested stop, 1 when start-up failed or supervision gave up,
    2 when another cluster holds the home or ports."""
    gpufleet_home = home()
    external_prefect = bool(os.environ.get("PREFECT_API_URL"))
    try:
        held = claim(gpufleet_home, port, None if external_prefect else prefect_port)
    except AlreadyRunning as exc:
        _warn(f"[red]error:[/red] {exc}")
        return 2
    stopping = threading.Event()
    starting = True

    def on_signal(*_: object) -> None:
        stopping.set()
        if starting:
            raise _Interrupted

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        cluster = None
        try:
            cluster = start_cluster(port, prefect_port, node_name, virtual_gpus, gpufleet_home, log=_say)
            starting = False
        except StartFailed as exc:
            _warn(f"[red]error:[/red] {exc}")
            return 1
        except _Interrupted:  # start_cluster stopped what it had started; or it had just returned
            if cluster is not None:
                cluster.stop()
            _say("stopped during start-up")
            return 0
        _say(f"[green]gpufleet is up[/green]\n  web page:     {cluster.api_url}/\n  gpufleet API: {cluster.api_url}")
        if cluster.prefect_ui_url:
            _say(f"  Prefect UI:   {cluster.prefect_ui_url}")
        _say(f"  Prefect API:  {cluster.prefect_api_url}\n  node:         {node_name}\n"
             f"  home:         {gpufleet_home} (pid {os.getpid()})\n"
             f"  use it from another shell with: export GPUFLEET_SERVER_URL={cluster.api_url}\n"
             + _auth_lines(cluster, gpufleet_home) +
             "Ctrl-C (or `gpufleet down`) stops everything.")
        os.environ["GPUFLEET_SERVER_URL"] = cluster.api_url
        code = _supervise(cluster.children, stopping, demo)
        _say("stopping gpufleet…")
        cluster.stop()
        _say("stopped")
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        held.release()


def _auth_lines(cluster, gpufleet_home) -> str:  # noqa: ANN001 - Cluster, Path
    """How to authenticate; the admin key itself only the first time (it is shown once)."""
    from gpufleet.credentials import FILE_NAME

    if cluster.api_key is None:
        return ("  [bold red]authentication is OFF[/bold red] (--no-auth / GPUFLEET_AUTH=off): anyone who can "
                "reach the port is admin — a single-user laptop only\n")
    lines = ""
    if cluster.new_admin_key:
        lines += f"  admin API key (shown once): {cluster.api_key}\n"
    lines += (f"  the CLI of this home reads its key from {gpufleet_home / FILE_NAME} (mode 0600); other tools:\n"
              f"    curl -H \"Authorization: Bearer $(jq -r .api_key {gpufleet_home / FILE_NAME})\" "
              f"{cluster.api_url}/v1/deployments\n"
              "  more keys: gpufleet keys create --name NAME [--role operator|inference] [--models a,b] [--expires 30d]\n")
    return lines


def _supervise(children: list, stopping: threading.Event, demo: Callable[[], object] | None) -> int:  # type: ignore[type-arg]
    """Until a stop is asked (0), supervision gives up (1) or the demo fails (1)."""
    supervisor = Supervisor(children, log=_warn)
    demo_failed: list[BaseException] = []
    if demo is not None:
        def run_demo() -> None:
            try:
                demo()
            except Exception as exc:  # noqa: BLE001 - reported, then `up` stops
                demo_failed.append(exc)
                stopping.set()

        threading.Thread(target=run_demo, name="gpufleet-demo", daemon=True).start()
    while not stopping.is_set():
        try:
            supervisor.check()
        except GaveUp as exc:
            _warn(f"[red]error:[/red] {exc}")
            return 1
        stopping.wait(0.5)
    if demo_failed:
        _warn(f"[red]error:[/red] the demo failed: {demo_failed[0]}")
        return 1
    return 0
