"""Which container image runs a backend, and pulling it with progress.

Two image modes (docs/runtimes.md):

- **image**: the engine's own upstream image for its version and device kind, from
  :data:`TABLE` (``ghcr.io/ggml-org/llama.cpp:server-cuda-b11434``,
  ``vllm/vllm-openai:v0.32.0``, …), run with the program at the place that image
  keeps it. A deployment (``DeploymentConfig.image``) or a node (``gpufleet node
  --image ENGINE=REF``, a private registry or an air-gapped mirror) may name another
  reference; it is assumed to be built like the upstream image.
- **host-runtime**: a node started with ``--host-runtime-image REF`` runs the program
  it resolved itself (the same one the process runtime would run) inside ``REF``, a
  minimal base image, with the host's runtime (``/usr``, the Python installation, the
  virtual environment, gpufleet's source, the llama.cpp build) bind-mounted read-only.
  This is for nodes with no registry in reach and no engine images, and what the tests
  use: no image from a registry is needed.

An image that is not on the node is pulled through the Docker engine, and the
pull's progress (``PULLING IMAGE 42 %``) goes to the instance state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from gpufleet.core.backends.launch import LaunchDescription
from gpufleet.core.backends.registry import ENGINES, LLAMA_ENGINES
from gpufleet.core.schemas import EngineInstall

ImageMode = Literal["image", "host-runtime"]
ProgressFn = Callable[[int], None]
REPORT_EVERY_S = 1.0

#: (engine, device kind) -> reference template ("{version}" filled in). The upstream projects'
#: own images: llama.cpp's server images (the `full` ones also carry rpc-server), vLLM's
#: OpenAI server, GPUStack's runner image for vox-box.
TABLE: dict[tuple[str, str], str] = {
    ("llama.cpp", "cuda"): "ghcr.io/ggml-org/llama.cpp:server-cuda-{version}",
    ("llama.cpp", "rocm"): "ghcr.io/ggml-org/llama.cpp:server-rocm-{version}",
    ("llama.cpp", "vulkan"): "ghcr.io/ggml-org/llama.cpp:server-vulkan-{version}",
    ("llama.cpp", "cpu"): "ghcr.io/ggml-org/llama.cpp:server-{version}",
    ("llama.cpp-rpc", "cuda"): "ghcr.io/ggml-org/llama.cpp:full-cuda-{version}",
    ("llama.cpp-rpc", "rocm"): "ghcr.io/ggml-org/llama.cpp:full-rocm-{version}",
    ("llama.cpp-rpc", "cpu"): "ghcr.io/ggml-org/llama.cpp:full-{version}",
    ("vllm", "cuda"): "vllm/vllm-openai:v{version}",
    ("vllm", "rocm"): "rocm/vllm:v{version}",
    ("vllm", "cpu"): "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v{version}",
    ("vox-box", "cuda"): "gpustack/runner:cuda12.8-voxbox{version}",
}

#: Where each program lives inside the upstream images (and mirrors built like them).
IN_IMAGE_PROGRAMS: dict[str, list[str]] = {
    "llama-server": ["/app/llama-server"],
    "rpc-server": ["/app/rpc-server"],
}


class NoImage(LookupError):
    """No image is known for this engine, version and device; the message says how to name one."""


class PullFailed(RuntimeError):
    """The Docker engine could not pull the image; the message names it and quotes the registry's answer."""


@dataclass(frozen=True)
class ImageChoice:
    ref: str
    mode: ImageMode
    source: str  # where the choice came from, for messages: "deployment", "node", "table", "host-runtime"


def table_key(desc: LaunchDescription) -> str:
    """llama-box is started as llama.cpp's server; an RPC server needs a `full` image."""
    if desc.program.name == "rpc-server":
        return "llama.cpp-rpc"
    return "llama.cpp" if desc.engine in LLAMA_ENGINES else desc.engine


def upstream_image(desc: LaunchDescription, device: str) -> str:
    template = TABLE.get((table_key(desc), device))
    if template is None:
        known = ", ".join(sorted(d for (e, d) in TABLE if e == table_key(desc))) or "none"
        raise NoImage(f"no {desc.engine} image is known for {device.upper()} (known: {known}); name one with "
                      "`gpufleet deploy --image REF` or `gpufleet node --image ENGINE=REF`, or run the node's "
                      "own build with `gpufleet node --host-runtime-image REF`")
    return template.format(version=desc.version)


def choose_image(desc: LaunchDescription, device: str, *, deployment_image: str | None,
                 node_images: dict[str, str], host_runtime_image: str | None) -> ImageChoice:
    """The deployment's image first, then the node's override for the engine, then the
    node's host-runtime base image, then the table."""
    if deployment_image:
        return ImageChoice(deployment_image, "image", "deployment")
    override = node_images.get(desc.engine) or node_images.get(table_key(desc))
    if override:
        return ImageChoice(override, "image", "node")
    if host_runtime_image:
        return ImageChoice(host_runtime_image, "host-runtime", "host-runtime")
    return ImageChoice(upstream_image(desc, device), "image", "table")


def in_image_command(desc: LaunchDescription) -> list[str]:
    """The argv of the description's program inside an engine image."""
    program = desc.program
    if program.kind == "python-module":
        return ["python3", "-m", program.name, *desc.args]
    return [*IN_IMAGE_PROGRAMS.get(program.name, [program.name]), *desc.args]


def split_reference(ref: str) -> tuple[str, str]:
    """``repo[:tag]`` or ``repo@digest`` -> (repository, tag or digest); a registry port is not a tag."""
    if "@" in ref:
        repo, digest = ref.split("@", 1)
        return repo, digest
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = ref.rsplit(":", 1)
        return repo, tag
    return ref, "latest"


def has_image(client: Any, ref: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(ref)
        return True
    except ImageNotFound:
        return False


def ensure_image(client: Any, ref: str, progress: ProgressFn | None = None, worker: str = "this node") -> bool:
    """Pull ``ref`` through the Docker engine unless it is there already; True if pulled.
    Progress is the percentage of the layer bytes seen so far, at most once a second
    (and 100 at the end)."""
    from docker.errors import APIError, DockerException

    if has_image(client, ref):
        return False
    repo, tag = split_reference(ref)
    tracker = PullProgress(progress)
    try:
        for event in client.api.pull(repo, tag=tag, stream=True, decode=True):
            if "error" in event:
                raise PullFailed(_pull_message(ref, worker, str(event.get("error"))))
            tracker.update(event)
    except APIError as exc:
        raise PullFailed(_pull_message(ref, worker, str(exc.explanation or exc))) from exc
    except DockerException as exc:
        raise PullFailed(_pull_message(ref, worker, str(exc))) from exc
    if not has_image(client, ref):
        raise PullFailed(_pull_message(ref, worker, "the pull ended without the image"))
    tracker.finish()
    return True


def _pull_message(ref: str, worker: str, answer: str) -> str:
    return f"cannot pull image {ref} on worker {worker}: {answer.strip()}"


class PullProgress:
    """Sums the Docker engine's per-layer ``Downloading`` progress into one percentage."""

    def __init__(self, report: ProgressFn | None) -> None:
        self.report = report
        self.layers: dict[str, tuple[int, int]] = {}  # layer id -> (current, total)
        self.last_report = 0.0
        self.last_percent = -1

    def update(self, event: dict[str, Any]) -> None:
        layer, status = event.get("id"), event.get("status", "")
        detail = event.get("progressDetail") or {}
        if not layer:
            return
        if status == "Downloading" and detail.get("total"):
            self.layers[layer] = (int(detail.get("current", 0)), int(detail["total"]))
        elif status in ("Download complete", "Pull complete", "Already exists") and layer in self.layers:
            total = self.layers[layer][1]
            self.layers[layer] = (total, total)
        now = time.monotonic()
        if self.layers and now - self.last_report >= REPORT_EVERY_S:
            self._emit(self.percent())
            self.last_report = now

    def percent(self) -> int:
        done = sum(c for c, _ in self.layers.values())
        total = sum(t for _, t in self.layers.values())
        return min(100, int(done * 100 / total)) if total else 0

    def finish(self) -> None:
        self._emit(100)

    def _emit(self, percent: int) -> None:
        if self.report is not None and percent != self.last_percent:
            self.last_percent = percent
            self.report(percent)


def describe_progress(percent: int) -> str:
    return f"PULLING IMAGE {percent} %"


def engine_images(client: Any, node_images: dict[str, str]) -> list[EngineInstall]:
    """The engine images this node's Docker engine holds: for each engine, the node's override
    (``gpufleet node --image ENGINE=REF``, taken as the pinned version, for every device kind)
    or the table's images of the pinned version, where present. ``gpufleet backends ls`` lists
    them with the location ``image REF``. An image that is not here is pulled at launch, so
    this is what starts without a pull, not all that can run."""
    found = []
    for spec in ENGINES.values():
        key = "llama.cpp" if spec.name in LLAMA_ENGINES else spec.name
        by_ref: dict[str, list[str]] = {}
        for (engine_key, device), template in TABLE.items():
            if engine_key == key and device in ("cuda", "rocm", "cpu"):
                ref = node_images.get(spec.name) or template.format(version=spec.default_version)
                by_ref.setdefault(ref, []).append(device)
        found += [EngineInstall(engine=spec.name, version=spec.default_version, devices=sorted(devices),
                                location=f"image {ref}") for ref, devices in by_ref.items() if has_image(client, ref)]
    return found
