"""`gpufleet server`: the API process, with the control-queue worker beside it."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from typing import Any

import uvicorn

from gpufleet import orchestration
from gpufleet.server.app import create_app, prefect_trigger
from gpufleet.server.controller import prefect_run_state
from gpufleet.server import bootstrap
from gpufleet.server.control_worker import ControlWorker
from gpufleet.settings import home

log = logging.getLogger("gpufleet.server")


async def _apply_deployments() -> list[str]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await orchestration.apply_deployments(client)


def serve(host: str, port: int, database_url: str, control_worker: bool = True, auth: bool = True) -> None:
    worker = ControlWorker(orchestration.POOL, orchestration.CONTROL_QUEUE, f"control-{socket.gethostname()}")

    def startup() -> None:
        names = asyncio.run(_apply_deployments())
        log.info("Prefect deployments applied: %s", ", ".join(names))
        if control_worker:
            worker.start()

    def shutdown() -> None:
        if control_worker:
            worker.stop()

    def trigger_and_poke(flow_name: str, parameters: dict[str, Any]) -> str:
        run_id = prefect_trigger(flow_name, parameters)
        worker.poke()
        return run_id

    app = create_app(database_url, trigger=trigger_and_poke, on_startup=startup, on_shutdown=shutdown, auth=auth,
                     run_state=prefect_run_state)
    state = app.state.gpufleet
    if auth:
        boot = bootstrap.bootstrap(state, home(), port)
        bootstrap.export_controller_key(boot)  # before the control worker starts its flows
        bootstrap.announce(boot, home(), f"http://{host}:{port}", print, interactive=sys.stdout.isatty())
        sys.stdout.flush()
    else:
        warn = ("WARNING: authentication is OFF (--no-auth / GPUFLEET_AUTH=off): anyone who can reach "
                f"{host}:{port} may deploy, run code on the nodes and read every log. Use it on a "
                "single-user laptop only.")
        log.warning(warn)
        print(warn, file=sys.stderr, flush=True)
    try:
        # access log off (log_level warning): request lines never reach a log, and keys travel
        # in headers, never in URLs
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        if auth:
            bootstrap.remove_controller_key(state, port)
