"""Launch → healthy per engine for the tiny models, through the node's own launch path
(`backends.launch` → `wait_healthy`, what a serve run does) and by hand (the same command
line and environment started with `subprocess.Popen`, polled the same way); the difference
is what gpufleet's launch path adds.

    .venv/bin/python benchmarks/engine_start.py [--rounds 3] [--engines llama.cpp,vllm,vox-box]

vLLM's CPU build and vox-box come from the machine's engine environments
(`scripts/install-engines.sh`); vLLM starts in about a minute here, so its rounds default to 1.
The two paths alternate, so the machine's drift affects both alike.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support: the models' writers

from gpufleet.core.placement_spec import Placement  # noqa: E402
from gpufleet.core.schemas import DeploymentConfig, InstanceView, ModelSource  # noqa: E402
from gpufleet.core.states import InstanceState  # noqa: E402
from gpufleet.node import backends, processes  # noqa: E402
from gpufleet.node.context import NodeContext  # noqa: E402
from gpufleet.runtimes import environments  # noqa: E402
from gpufleet.sources import read_metadata  # noqa: E402

GiB = 1 << 30


def instance(iid: int, model: Path, backend: str, params: list[str], gpus: list[int]) -> InstanceView:
    now = datetime.now(timezone.utc)
    placement = Placement(worker="bench", gpu_indexes=gpus, vram_claim={g: 8 * GiB for g in gpus}, ram_claim=GiB)
    return InstanceView(id=iid, name=f"bench-{iid}", deployment="bench", state=InstanceState.SCHEDULED,
                        config=DeploymentConfig(source=ModelSource(kind="local_path", local_path=str(model)),
                                                backend=backend, backend_params=params),
                        placement=placement, created_at=now, updated_at=now)


def wait_http(port: int, paths: tuple[str, ...], alive: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the engine exited during start-up")
        for path in paths:
            try:
                if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
        time.sleep(0.05)
    raise TimeoutError(f"port {port}")


def through_gpufleet(node: NodeContext, inst: InstanceView, model: Path) -> tuple[float, list[str], dict[str, str]]:
    metadata = read_metadata(inst.config.source, None)
    t0 = time.perf_counter()
    record = backends.launch(inst, model, node, metadata)
    backends.wait_healthy(record, node.bind_host, record.readiness_timeout_s, tuple(record.health_paths))
    took = time.perf_counter() - t0
    desc = backends.describe_launch(inst, model, node, metadata, record.port)
    backends.stop(inst.id, node, grace=30)
    return took, list(record.command), {**desc.env, "_port": str(record.port), "_paths": ",".join(record.health_paths)}


def by_hand(command: list[str], env: dict[str, str], log: Path) -> float:
    old_port, paths = env.pop("_port"), tuple(env.pop("_paths").split(","))
    port = processes.allocate_port("127.0.0.1", set())
    command = [str(port) if arg == old_port else arg for arg in command]
    with log.open("w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            wait_http(port, paths, lambda: proc.poll() is None, 900)
            return time.perf_counter() - t0
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def models(tmp: Path, wanted: list[str]) -> dict[str, tuple[Path, str, list[str], list[int]]]:
    """engine → (model, backend, parameters, placed GPUs), for the engines wanted."""
    from gpufleet.demo.tiny_model import write_tiny_llama_gguf

    out: dict[str, tuple[Path, str, list[str], list[int]]] = {
        "llama.cpp": (write_tiny_llama_gguf(tmp / "tiny.gguf"), "llama.cpp", ["--ctx-size=512"], []),
    }
    root = environments.machine_cache_root()
    if "vllm" in wanted:
        from tests.support.vllm_models import write_tiny_chat_model

        vllm_env = environments.install("vllm", "0.32.0", "cpu", root, lock_timeout=1800)
        out["vllm"] = (write_tiny_chat_model(Path(vllm_env.location) / "bin" / "python", tmp / "tiny-llama"),
                       "vllm", ["--max-model-len=256", "--enforce-eager"], [0])
    if "vox-box" in wanted:
        from tests.support.voxbox_models import write_tiny_whisper

        vox_env = environments.install("vox-box", "0.0.21", "cpu", root, lock_timeout=1800)
        out["vox-box"] = (write_tiny_whisper(Path(vox_env.location) / "bin" / "python", tmp / "tiny-whisper"),
                          "vox-box", [], [])
    return {engine: spec for engine, spec in out.items() if engine in wanted}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds for llama.cpp and vox-box (vLLM: --vllm-rounds)")
    ap.add_argument("--vllm-rounds", type=int, default=1)
    ap.add_argument("--engines", default="llama.cpp,vllm,vox-box")
    args = ap.parse_args()
    os.environ.setdefault(environments.ENGINES_HOME_ENV, str(environments.machine_cache_root()))
    wanted = args.engines.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        node = NodeContext("bench", tmp / "node", "127.0.0.1", virtual_gpus=frozenset({0}),
                           gpu_memory=((0, 16 * GiB),), runtime="process")
        for engine, (model, backend, params, gpus) in models(tmp, wanted).items():
            rounds = args.vllm_rounds if engine == "vllm" else args.rounds
            ours, hand = [], []
            for r in range(rounds):
                took, command, env = through_gpufleet(node, instance(100 + r, model, backend, params, gpus), model)
                ours.append(took)
                hand.append(by_hand(command, env, tmp / f"{engine}-{r}.log"))
                print(f"{engine} round {r + 1}: gpufleet {took:.2f} s, by hand {hand[-1]:.2f} s", flush=True)
            rows.append((engine, statistics.median(ours), statistics.median(hand), rounds))
    print(f"\n{'engine':<11}{'gpufleet':>10}{'by hand':>10}{'added':>9}{'ratio':>8}  (launch -> healthy, median)")
    for engine, ours_s, hand_s, rounds in rows:
        print(f"{engine:<11}{ours_s:>9.2f}s{hand_s:>9.2f}s{ours_s - hand_s:>8.2f}s{ours_s / hand_s:>7.2f}x  "
              f"({rounds} round{'s' if rounds > 1 else ''})")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GPUFLEET_RUNTIME", "process")
    sys.exit(main())
