"""The real Docker engine the `docker` tests run against (started by scripts/start-dockerd.sh)."""

from __future__ import annotations

from typing import Any

import pytest


def docker_client() -> Any:
    """A client of the local engine; the test fails (does not skip) without one, naming the fix."""
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"the docker tests need a Docker engine: {exc}; run scripts/start-dockerd.sh (scripts/test.sh does)")
    return client


def labelled(client: Any, **labels: str) -> list[Any]:
    """Containers, running or not, carrying all these gpufleet.* labels."""
    filters = {"label": [f"gpufleet.{k.replace('_', '-')}={v}" for k, v in labels.items()]}
    return client.containers.list(all=True, filters=filters)


def remove_labelled(client: Any, **labels: str) -> None:
    for container in labelled(client, **labels):
        container.remove(force=True)
