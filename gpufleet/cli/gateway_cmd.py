"""``gpufleet gateway``: a separate OpenAI-compatible gateway process (gpufleet.gateway).

The gpufleet server already serves the gateway's routes; run this to scale them out: each
process reads the routing table from the server's API and keeps only its own in-flight
counts, so any number can run side by side behind a TCP load balancer.
"""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer

DEFAULT_GATEWAY_PORT = 8480


def register(app: typer.Typer) -> None:
    @app.command()
    def gateway(
        server: Annotated[Optional[str], typer.Option(
            help="gpufleet server URL (default: GPUFLEET_SERVER_URL, else http://127.0.0.1:8470)")] = None,
        host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="port to listen on")] = DEFAULT_GATEWAY_PORT,
    ) -> None:
        """Run an OpenAI-compatible gateway for every deployment (/v1/chat/completions, /v1/models …);
        the timeouts and waits come from GPUFLEET_GATEWAY_* (docs/gateway.md)."""
        from gpufleet.client import server_url
        from gpufleet.credentials import CredentialsError, api_key
        from gpufleet.gateway.front import run
        from gpufleet.gateway.settings import GatewaySettings
        from gpufleet.gateway.standalone import create_gateway_app

        try:
            settings = GatewaySettings.from_env()
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        url = (server or server_url()).rstrip("/")
        try:
            key = api_key()  # reads the routing table with it (an admin or operator key)
        except CredentialsError as exc:
            raise typer.BadParameter(str(exc)) from exc
        headers = {"Authorization": f"Bearer {key}"} if key else None
        logging.getLogger(__name__).info("gateway on http://%s:%d, routing table from %s", host, port, url)
        # its own HTTP server, not uvicorn: the gateway's hot path (docs/gateway.md, Overhead)
        run(create_gateway_app(url, settings, headers), host, port)
