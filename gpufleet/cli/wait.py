"""Waiting for a deployment to converge, with a live status line."""

from __future__ import annotations

import re
import time

from gpufleet.client import ApiError, GpufleetClient
from gpufleet.cli.output import console
from gpufleet.core.schemas import InstanceView
from gpufleet.core.states import InstanceState


class WaitFailed(RuntimeError):
    pass


#: The node reports pulls as "DOWNLOADING 42 % (1.2 GiB of 2.9 GiB, 85 MiB/s)".
_PERCENT = re.compile(r"^DOWNLOADING (\d+) %(.*)$")
BAR_WIDTH = 20


def progress_bar(percent: int, width: int = BAR_WIDTH) -> str:
    filled = max(0, min(width, percent * width // 100))
    return "█" * filled + "░" * (width - filled) + f" {percent} %"


def _describe(i: InstanceView) -> str:
    """State of one instance; a download shows as a bar with its size and rate."""
    m = _PERCENT.match(i.state_message) if i.state == InstanceState.DOWNLOADING else None
    if m is None:
        return f"{i.name}: {i.state}"
    return f"{i.name}: downloading {progress_bar(int(m.group(1)))}{m.group(2)}"


def _summary(instances: list[InstanceView]) -> str:
    parts = [_describe(i) for i in instances if not i.deleting]
    removing = sum(1 for i in instances if i.deleting)
    if removing:
        parts.append(f"{removing} removing")
    return ", ".join(parts) or "no instances"


def wait_for_deployment(client: GpufleetClient, name: str, timeout: float, gone: bool = False) -> list[InstanceView]:
    """Until every desired replica is RUNNING and no surplus remains (or the deployment
    is gone, with `gone`). Raises WaitFailed on ERROR or timeout."""
    deadline = time.monotonic() + timeout
    with console.status(f"waiting for {name}…") as status:
        while time.monotonic() < deadline:
            try:
                dep = client.get_deployment(name)
                instances = client.list_instances(deployment=name)
            except ApiError as exc:
                if gone and exc.status == 404:  # may vanish between the two reads
                    return []
                raise
            status.update(f"{name}: {dep.ready_replicas}/{dep.replicas} ready — {_summary(instances)}")
            live = [i for i in instances if not i.deleting]
            failed = [i for i in live if i.state == InstanceState.ERROR]
            # A failed instance that is about to be removed (deletion, scale-down) is no failure.
            if failed and not gone and len(live) <= dep.replicas:
                raise WaitFailed("; ".join(f"instance {i.id} ({i.name}) ERROR: {i.state_message}" for i in failed))
            if not gone and len(instances) == dep.replicas and all(i.state == InstanceState.RUNNING for i in live):
                return instances
            time.sleep(0.25)
    raise WaitFailed(f"{name} did not converge within {timeout:.0f} s; see `gpufleet ps {name}`")
