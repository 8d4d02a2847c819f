"""Waiting for a deployment to converge, saying in words what it waits for.

Why: a deploy that could not be placed used to wait silently for the whole timeout and then
say only "did not converge". The server knows why (a PENDING instance carries its reason per
worker, a download its progress, an ERROR its cause), so the wait shows that as it changes:
a live status line on a terminal, one line per change otherwise (logs, CI, pipes). On timeout
it prints the same and what to try.
"""

from __future__ import annotations

import re
import time

import typer

from gpufleet.client import ApiError, GpufleetClient
from gpufleet.cli.output import console
from gpufleet.core.schemas import DeploymentView, InstanceView
from gpufleet.core.states import InstanceState


class WaitFailed(RuntimeError):
    pass


#: The node reports pulls as "DOWNLOADING 42 % (1.2 GiB of 2.9 GiB, 85 MiB/s)".
_PERCENT = re.compile(r"^DOWNLOADING (\d+) %(.*)$")
BAR_WIDTH = 20
#: States whose message is the point: why it waits, or what failed.
_EXPLAINED = (InstanceState.PENDING, InstanceState.ERROR, InstanceState.UNREACHABLE)


def positive_timeout(value: float | None) -> float | None:
    """Typer callback for every --timeout: 0 or less would never wait, or wait forever."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be more than 0 seconds, got {value:g}")
    return value


def progress_bar(percent: int, width: int = BAR_WIDTH) -> str:
    filled = max(0, min(width, percent * width // 100))
    return "█" * filled + "░" * (width - filled) + f" {percent} %"


def describe(i: InstanceView) -> str:
    """State of one instance in words: a download as a bar with its size and rate, a PENDING,
    ERROR or UNREACHABLE instance with its reason (for PENDING: the reason per worker)."""
    m = _PERCENT.match(i.state_message) if i.state == InstanceState.DOWNLOADING else None
    if m is not None:
        return f"{i.name}: downloading {progress_bar(int(m.group(1)))}{m.group(2)}"
    if i.state in _EXPLAINED and i.state_message:
        return f"{i.name}: {i.state}: {i.state_message.splitlines()[0]}"
    return f"{i.name}: {i.state}"


def summary(instances: list[InstanceView]) -> str:
    parts = [describe(i) for i in instances if not i.deleting]
    removing = sum(1 for i in instances if i.deleting)
    if removing:
        parts.append(f"{removing} removing")
    return "; ".join(parts) or "no instances"


def what_to_try(name: str, instances: list[InstanceView]) -> str:
    """Advice for a wait that timed out, from what the instances are doing."""
    live = [i for i in instances if not i.deleting]
    tips = []
    if any(i.state == InstanceState.PENDING and i.state_message.startswith("cannot be placed") for i in live):
        tips.append("it is placed as soon as the cluster changes; meanwhile change the placement "
                    "(`gpufleet plan …` gives the reason per worker), add or free a worker (`gpufleet workers`), "
                    f"or lower the replicas (`gpufleet scale {name} N`)")
    if any(i.state == InstanceState.DOWNLOADING for i in live):
        tips.append("the download goes on: wait longer (--timeout) or watch `gpufleet ps " + name + "`")
    starting = [i for i in live if i.state in (InstanceState.STARTING, InstanceState.ERROR)]
    if starting:
        tips.append(f"see the backend's log: `gpufleet logs {starting[0].id} --tail 50`")
    tips.append(f"the operation goes on in the background; `gpufleet ps {name}` shows where it is, "
                "and a longer --timeout waits longer")
    return "what to try: " + "; ".join(tips)


class _Progress:
    """Where the wait says what it sees: a live status line on a terminal, else a line per change."""

    def __init__(self, name: str) -> None:
        self.live = console.is_terminal
        self.status = console.status(f"waiting for {name}…") if self.live else None
        self.last = ""

    def __enter__(self) -> _Progress:
        if self.status is not None:
            self.status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.__exit__(*exc)

    def show(self, line: str) -> None:
        if line == self.last:
            return
        self.last = line
        if self.status is not None:
            self.status.update(line)
        else:
            console.print(f"waiting: {line}", highlight=False, soft_wrap=True)


def _line(name: str, dep: DeploymentView, instances: list[InstanceView]) -> str:
    return f"{name}: {dep.ready_replicas}/{dep.replicas} ready — {summary(instances)}"


def wait_for_deployment(client: GpufleetClient, name: str, timeout: float, gone: bool = False) -> list[InstanceView]:
    """Until every desired replica is RUNNING and no surplus remains (or the deployment
    is gone, with `gone`). Raises WaitFailed on ERROR or timeout, saying why and what to try."""
    deadline = time.monotonic() + timeout
    line, instances = f"{name}: no answer yet", []
    with _Progress(name) as progress:
        while time.monotonic() < deadline:
            try:
                dep = client.get_deployment(name)
                instances = client.list_instances(deployment=name)
            except ApiError as exc:
                if gone and exc.status == 404:  # may vanish between the two reads
                    return []
                raise
            line = _line(name, dep, instances)
            progress.show(line)
            live = [i for i in instances if not i.deleting]
            failed = [i for i in live if i.state == InstanceState.ERROR]
            # A failed instance that is about to be removed (deletion, scale-down) is no failure.
            if failed and not gone and len(live) <= dep.replicas:
                raise WaitFailed("; ".join(f"instance {i.id} ({i.name}) ERROR: {i.state_message}" for i in failed)
                                 + "\n" + what_to_try(name, instances))
            if not gone and len(instances) == dep.replicas and all(i.state == InstanceState.RUNNING for i in live):
                return instances
            time.sleep(0.25)
    raise WaitFailed(f"{name} did not converge within {timeout:g} s: {line}\n{what_to_try(name, instances)}")
