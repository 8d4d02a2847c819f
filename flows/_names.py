"""Flow run names that say what a run does (``deploy tiny ×2``, ``scale tiny → 3``,
``serve-instances node-a: 7, 8``), so Prefect's run list reads as the cluster's history,
and the final state of a run that found nothing to do.

Prefect calls a ``flow_run_name`` callable with no arguments once the run's parameters are
validated; they are read from :mod:`prefect.runtime`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prefect.runtime import flow_run
from prefect.states import Completed, State

from gpufleet.client import ApiError
from gpufleet.orchestration import node_run_name


def _params() -> dict[str, Any]:
    return dict(flow_run.parameters or {})


def _field(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else getattr(value, key, None)


def deploy_name() -> str:
    spec = _params().get("spec")
    return f"deploy {_field(spec, 'name')} ×{_field(spec, 'replicas')}"


def scale_name() -> str:
    p = _params()
    return f"scale {p.get('name')} → {p.get('replicas')}"


def named(operation: str, key: str = "name") -> Callable[[], str]:
    """``<operation> <parameter>``: ``delete tiny``, ``restart instance 7``."""

    def name() -> str:
        return f"{operation} {_params().get(key)}"

    name.__name__ = f"{operation.replace('-', '_')}_name"
    return name


def on_node(operation: str) -> Callable[[], str]:
    """``<operation> <node>: <instance ids>`` for node-local runs (the node serving the
    queue names itself through its environment)."""

    def name() -> str:
        return node_run_name(operation, os.environ.get("GPUFLEET_NODE_NAME", "?"), _params().get("instance_ids"))

    name.__name__ = f"{operation.replace('-', '_')}_name"
    return name


def install_name() -> str:
    p = _params()
    node = os.environ.get("GPUFLEET_NODE_NAME", "?")
    return f"install-backend {node}: {p.get('engine')} {p.get('version')} ({p.get('device', 'cpu')})"


def nothing_to_do(message: str) -> State:
    """A run whose target is gone (deleted meanwhile) has nothing to do: it ends Completed,
    with why, rather than Failed."""
    return Completed(message=message)


def unless_gone(what: str, step: Callable[[], Any]) -> Any:
    """``step()``, or a Completed "nothing to do" state when the server answers 404 for
    ``what`` (the deployment or instance was deleted before or while this run ran)."""
    try:
        return step()
    except ApiError as exc:
        if exc.status != 404:
            raise
        return nothing_to_do(f"{what} no longer exists; nothing to do ({exc.detail})")
