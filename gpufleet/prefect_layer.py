"""The seam between gpufleet's adapters and its Prefect layer (``flows/ tasks/ workers/ blocks/``).

The Prefect layer imports gpufleet: its flows are recipes over the adapters. gpufleet must
not import it back, or the two form one import cycle in which every change to a flow can
break the server's start-up. What the adapters need of the Prefect layer is therefore
passed in as one object, :class:`PrefectLayer`: the in-process worker class that serves a
work queue, the block types to register, a flow by its ``prefect.yaml`` entrypoint, and the
saved hub credentials. The Prefect layer publishes it as the entry point
``gpufleet.prefect_layer`` (``pyproject.toml``), so whoever installs gpufleet installs both,
and gpufleet finds it without naming a module of that layer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

GROUP = "gpufleet"
NAME = "prefect_layer"


class PrefectLayerMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class PrefectLayer:
    """``worker_class``: a Prefect worker (``BaseWorker`` subclass) that runs flow runs in this
    process, with ``poke()``; ``block_types``: Prefect ``Block`` classes to register;
    ``load_flow``: the flow object of an entrypoint such as ``flows/deploy.py:deploy``;
    ``load_hub_credentials``: the saved hub-credentials block, or None."""

    worker_class: type
    block_types: tuple[type, ...]
    load_flow: Callable[[str], Any]
    load_hub_credentials: Callable[[], object | None]


@functools.cache
def prefect_layer() -> PrefectLayer:
    found = entry_points(group=GROUP, name=NAME)
    if not found:
        raise PrefectLayerMissing(
            f"gpufleet's Prefect layer is not installed (no entry point {GROUP}.{NAME}); "
            "install gpufleet from its repository with `pip install -e .` (scripts/setup.sh does)")
    layer = next(iter(found)).load()
    if not isinstance(layer, PrefectLayer):
        raise PrefectLayerMissing(f"entry point {GROUP}.{NAME} is {type(layer).__name__}, not a PrefectLayer")
    return layer
