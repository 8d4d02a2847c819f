"""The pure parts of the docker runtime: image choice, references, pull progress, and
the rewrites a container needs (listen address, GPU numbering). No Docker engine."""

from __future__ import annotations

import pytest

from gpufleet.core.backends.launch import LaunchDescription, Program
from gpufleet.node.runtimes import images
from gpufleet.node.runtimes.docker import listen_everywhere, needs_host_network, renumber_visible


def desc(engine: str = "llama.cpp", program: str = "llama-server", kind: str = "executable",
         args: list[str] | None = None) -> LaunchDescription:
    return LaunchDescription(engine=engine, version="b11434" if "llama" in engine else "0.32.0",
                             program=Program(kind, program), args=args or [])  # type: ignore[arg-type]


def test_image_table_and_precedence() -> None:
    d = desc()
    assert images.upstream_image(d, "cuda") == "ghcr.io/ggml-org/llama.cpp:server-cuda-b11434"
    assert images.upstream_image(d, "cpu") == "ghcr.io/ggml-org/llama.cpp:server-b11434"
    assert images.upstream_image(desc(program="rpc-server"), "cuda") == "ghcr.io/ggml-org/llama.cpp:full-cuda-b11434"
    vllm = desc("vllm", "vllm.entrypoints.openai.api_server", "python-module")
    assert images.upstream_image(vllm, "cuda") == "vllm/vllm-openai:v0.32.0"
    assert images.in_image_command(vllm)[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert images.in_image_command(desc(args=["--port", "1"])) == ["/app/llama-server", "--port", "1"]

    choose = images.choose_image
    assert choose(d, "cuda", deployment_image="a/b:1", node_images={"llama.cpp": "m/l:2"},
                  host_runtime_image="base:3") == images.ImageChoice("a/b:1", "image", "deployment")
    assert choose(d, "cuda", deployment_image=None, node_images={"llama.cpp": "m/l:2"},
                  host_runtime_image="base:3").source == "node"
    assert choose(d, "cuda", deployment_image=None, node_images={}, host_runtime_image="base:3").mode == "host-runtime"
    assert choose(d, "cuda", deployment_image=None, node_images={}, host_runtime_image=None).source == "table"
    with pytest.raises(images.NoImage, match="no vox-box image is known for CPU.*--image"):
        images.upstream_image(desc("vox-box", "vox_box.main", "python-module"), "cpu")


def test_references_split_tag_from_registry_port() -> None:
    assert images.split_reference("127.0.0.1:5000/gpufleet/x") == ("127.0.0.1:5000/gpufleet/x", "latest")
    assert images.split_reference("127.0.0.1:5000/gpufleet/x:1") == ("127.0.0.1:5000/gpufleet/x", "1")
    assert images.split_reference("vllm/vllm-openai@sha256:ab") == ("vllm/vllm-openai", "sha256:ab")


def test_pull_progress_sums_layers_and_ends_at_100(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "REPORT_EVERY_S", 0.0)
    seen: list[int] = []
    p = images.PullProgress(seen.append)
    p.update({"id": "a", "status": "Downloading", "progressDetail": {"current": 50, "total": 100}})
    p.update({"id": "b", "status": "Downloading", "progressDetail": {"current": 0, "total": 300}})
    p.update({"id": "a", "status": "Download complete"})
    p.update({"id": "b", "status": "Downloading", "progressDetail": {"current": 200, "total": 300}})
    p.finish()
    assert seen == [50, 12, 25, 75, 100]
    assert images.describe_progress(42) == "PULLING IMAGE 42 %"


def test_container_rewrites() -> None:
    assert listen_everywhere(["--host", "127.0.0.1", "--port", "5"], "127.0.0.1") == ["--host", "0.0.0.0",
                                                                                     "--port", "5"]
    assert listen_everywhere(["--host=10.0.0.2"], "10.0.0.2") == ["--host=0.0.0.0"]
    assert listen_everywhere(["--host", "10.9.9.9"], "10.0.0.2") == ["--host", "10.9.9.9"]  # not ours: kept
    # host GPUs 5 and 2, in the description's order, are the container's 1 and 0
    assert renumber_visible("5,2", [5, 2]) == "1,0"
    assert renumber_visible("", [3]) == "0"
    assert needs_host_network(desc(program="rpc-server"))
    assert needs_host_network(desc(args=["--rpc", "h:1"])) and not needs_host_network(desc())
