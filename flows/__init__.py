"""gpufleet's Prefect flows. `ALL_FLOWS` maps each flow's name to the flow, for the worker."""

from __future__ import annotations

from typing import Any


def all_flows() -> dict[str, Any]:
    from flows.delete import delete, delete_instance
    from flows.deploy import deploy
    from flows.edit import edit
    from flows.node import install_backend_flow, serve_instances, serve_rpc_servers, stop_instances
    from flows.reconcile import reconcile
    from flows.restart import restart
    from flows.restart_deployment import restart_deployment
    from flows.scale import scale, start, stop

    flows = [deploy, edit, scale, stop, start, delete, delete_instance, restart, restart_deployment, reconcile,
             serve_instances,
             serve_rpc_servers, stop_instances, install_backend_flow]
    return {f.name: f for f in flows}
