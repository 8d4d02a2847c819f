"""The engines this node can run: what it reports, and the program each launch runs.

An engine module describes a launch by *program* (`llama-server`, `rpc-server`,
or a Python module such as vLLM's API server); this module finds that program
on the node for the engine version and the device kind of the placement. A
version or device the node lacks is refused with the command that installs it,
never run on something else.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gpufleet.core.backends.launch import LaunchDescription
from gpufleet.core.backends.registry import ENGINES, LLAMA_ENGINES, engine
from gpufleet.core.schemas import EngineInstall
from gpufleet.node.context import NodeContext
from gpufleet.node.runtimes import images
from gpufleet.runtimes import environments, llama_rpc, llama_server

log = logging.getLogger(__name__)


class EngineUnavailable(RuntimeError):
    """This node cannot run the engine version on that device; the message says how to fix it."""


def engines_root(node: NodeContext) -> Path:
    return environments.engines_root(node.home)


def resolve_program(desc: LaunchDescription, node: NodeContext, device: str) -> list[str]:
    """The argv prefix that runs ``desc.program`` on this node."""
    program = desc.program
    if program.kind == "executable" and program.name == "rpc-server":
        found = llama_rpc.rpc_server_executable()
        if found is None:
            raise EngineUnavailable(f"worker {node.name} has no llama.cpp rpc-server: "
                                    f"{llama_rpc.rpc_unavailable_reason()}")
        return found
    if program.kind == "executable" and program.name == "llama-server":
        try:
            return llama_server.llama_server_for(device)
        except llama_server.NoLlamaServer as exc:
            raise EngineUnavailable(f"{exc} (worker {node.name})") from exc
    if program.kind == "python-module":
        python = environments.python_of(engines_root(node), desc.engine, desc.version, device)
        if python is None:
            raise EngineUnavailable(
                f"{desc.engine} {desc.version} for {device.upper()} is not installed on worker {node.name}; "
                f"install it with `gpufleet backends install {desc.engine} {desc.version} --node {node.name}` "
                f"(installed here: {_listing(node, desc.engine)})")
        return [str(python), "-m", program.name]
    raise EngineUnavailable(f"unknown program {program} for {desc.engine}")


def default_version(engine_name: str, node: NodeContext) -> str:
    """The pinned version of a pip-installed engine; for llama.cpp, whichever server runs."""
    return engine(engine_name).default_version


def node_engines(node: NodeContext) -> list[EngineInstall]:
    """Every engine version this node can run, with the device kinds each can use."""
    report: list[EngineInstall] = []
    for i, server in enumerate(llama_server.installed()):
        if not server.devices:
            continue
        report.append(EngineInstall(engine="llama.cpp", version=server.version, devices=list(server.devices),
                                    location=server.location, default=i == 0, flags=list(server.flags)))
    for install in environments.installed(engines_root(node)):
        pinned = install.version == ENGINES[install.engine].default_version if install.engine in ENGINES else False
        report.append(install.model_copy(update={"default": pinned}))
    if node.runtime == "docker":
        report += _docker_images(node)
    return report


def _docker_images(node: NodeContext) -> list[EngineInstall]:
    """Engine images present on a docker node (best effort: Docker down means none listed)."""
    try:
        import docker

        client = docker.from_env(timeout=10)
        try:
            return images.engine_images(client, dict(node.images))
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - listing images must never stop a node registering
        log.warning("cannot list engine images: %s", exc)
        return []


def _listing(node: NodeContext, engine_name: str) -> str:
    versions = [f"{e.version} ({', '.join(e.devices)})" for e in environments.installed(engines_root(node))
                if e.engine == engine_name]
    return ", ".join(versions) or "none"


def is_llama(engine_name: str) -> bool:
    return engine_name in LLAMA_ENGINES
