"""What the docker runtime costs per instance: start → healthy of the tiny model's
llama.cpp server as a container and as a process, through the node's own code
(`backends.launch` → `wait_healthy` → `backends.stop`), median of N each.

    scripts/start-dockerd.sh && .venv/bin/python benchmarks/docker_runtime.py [--rounds 5]

The container runs the node's llama.cpp build in the host-runtime base image (no
registry here), so the difference is the Docker engine's own work: create, mounts,
network namespace and port publishing, start, and the log stream.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from gpufleet.core.placement_spec import Placement
from gpufleet.core.schemas import DeploymentConfig, InstanceView, ModelSource
from gpufleet.core.states import InstanceState
from gpufleet.demo.tiny_model import write_tiny_llama_gguf
from gpufleet.node import backends
from gpufleet.node.context import NodeContext


def instance(iid: int, model: Path) -> InstanceView:
    now = datetime.now(timezone.utc)
    return InstanceView(id=iid, name=f"bench-{iid}", deployment="bench", state=InstanceState.SCHEDULED,
                        config=DeploymentConfig(source=ModelSource(kind="local_path", local_path=str(model))),
                        placement=Placement(worker="bench", ram_claim=64 << 20), created_at=now, updated_at=now)


def start_to_healthy(node: NodeContext, model: Path, iid: int) -> tuple[float, float]:
    """(start → healthy, stop) seconds for one backend."""
    t0 = time.perf_counter()
    record = backends.launch(instance(iid, model), model, node, None)
    backends.wait_healthy(record, node.bind_host, 60, tuple(record.health_paths))
    healthy = time.perf_counter() - t0
    t1 = time.perf_counter()
    backends.stop(iid, node, grace=5)
    return healthy, time.perf_counter() - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import docker

    from gpufleet.node.runtimes.host_image import ensure_host_runtime_image

    image = ensure_host_runtime_image(docker.from_env())
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_llama_gguf(Path(tmp) / "models" / "tiny.gguf")
        nodes = {
            "process": NodeContext("bench", Path(tmp) / "process", "127.0.0.1", runtime="process"),
            "docker": NodeContext("bench", Path(tmp) / "docker", "127.0.0.1", runtime="docker",
                                  cluster="benchmark", host_runtime_image=image),
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in nodes}
        start_to_healthy(nodes["process"], model, 999)  # warm the page cache and the binary probe
        for r in range(args.rounds):
            for name, node in nodes.items():  # interleaved, so drift affects both alike
                results[name].append(start_to_healthy(node, model, r + 1))
    median = {name: statistics.median(h for h, _ in rows) for name, rows in results.items()}
    stop = {name: statistics.median(s for _, s in rows) for name, rows in results.items()}
    print(f"tiny model, llama.cpp, median of {args.rounds}")
    print(f"{'runtime':<10}{'start→healthy':>16}{'stop':>10}")
    for name in nodes:
        print(f"{name:<10}{median[name]:>15.3f}s{stop[name]:>9.3f}s")
    print(f"docker / process: {median['docker'] / median['process']:.1f}×, "
          f"added per instance: {median['docker'] - median['process']:.3f} s to start, "
          f"{stop['docker'] - stop['process']:.3f} s to stop")


if __name__ == "__main__":
    main()
