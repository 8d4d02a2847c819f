"""What gpufleet's adapters use of this Prefect layer, published as the entry point
``gpufleet.prefect_layer`` (see :mod:`gpufleet.prefect_layer` for why it is passed in)."""

from __future__ import annotations

import importlib
from typing import Any

from blocks.gpufleet_server import GpufleetServer
from blocks.hub_credentials import BLOCK_NAME, HubCredentials
from gpufleet.prefect_layer import PrefectLayer
from workers.inprocess import GpufleetWorker


def load_flow(entrypoint: str) -> Any:
    """``flows/deploy.py:deploy`` → the flow object (imported as a module of this package)."""
    path, _, attr = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, attr)


def load_hub_credentials() -> HubCredentials | None:
    try:
        return HubCredentials.load(BLOCK_NAME)  # type: ignore[return-value]
    except ValueError:  # no block saved under that name
        return None


LAYER = PrefectLayer(
    worker_class=GpufleetWorker,
    block_types=(GpufleetServer, HubCredentials),
    load_flow=load_flow,
    load_hub_credentials=load_hub_credentials,
)
