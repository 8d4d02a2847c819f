"""The RPC binaries gpufleet builds work together: one llama-server spreads a model over two
rpc-server processes (CPU devices, on 127.0.0.1) and answers a chat request.

This is what a distributed instance runs, minus the placement: if the build lacked RPC, if the
two binaries disagreed on the RPC protocol, or if `--tensor-split` did not reach the remote
devices, this test fails. Every process is real and is killed in `finally`.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from gpufleet.demo.tiny_model import TinyModelShape, write_tiny_llama_gguf
from tests.support.servers import free_port, tail, wait_healthy

pytestmark = pytest.mark.rpc

HOST = "127.0.0.1"
PORT_TIMEOUT_S = 10.0
HEALTH_TIMEOUT_S = 30.0
# llama.cpp names a remote buffer after its device, "RPC<device on that server>[<endpoint>]":
#   load_tensors: RPC0[127.0.0.1:40123] model buffer size =     0.20 MiB
#   llama_kv_cache: RPC0[127.0.0.1:40123] KV buffer size =     0.50 MiB
BUFFER_LINE = re.compile(
    r"(?P<device>RPC\d+)\[(?P<endpoint>[\d.]+:\d+)\]\s+(?P<kind>model|KV) buffer size\s*=\s*(?P<mib>[\d.]+) MiB"
)
OFFLOADED_LINE = re.compile(r"offloaded (?P<done>\d+)/(?P<total>\d+) layers to GPU")
# llama-server's default verbosity (3) hides the library's buffer lines; 4 shows them.
LOG_VERBOSITY = "4"


@pytest.fixture(scope="module")
def four_layer_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with 4 blocks instead of 2: split 1,1 over 5 offloadable layers (blocks +
    output), each RPC device then holds repeating blocks and so a KV buffer. With 2 blocks both
    land on the first device and the second holds only the output layer."""
    return write_tiny_llama_gguf(
        tmp_path_factory.mktemp("models") / "tiny-4-layers.gguf", shape=TinyModelShape(n_layers=4)
    )


@contextmanager
def process(cmd: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child with its output in `log`, killed (and reaped) however the test ends."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def wait_for_port(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """An rpc-server is ready once it accepts TCP connections (it prints nothing we can wait on:
    its stdout is block-buffered into the log)."""
    deadline = time.monotonic() + PORT_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"rpc-server on port {port} exited with {proc.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"rpc-server not listening on {HOST}:{port} after {PORT_TIMEOUT_S} s:\n{tail(log)}")


def remote_buffers(log_text: str) -> dict[tuple[str, str], float]:
    """(endpoint, 'model' | 'KV') -> MiB, from llama-server's buffer lines."""
    return {
        (m["endpoint"], m["kind"]): float(m["mib"]) for m in BUFFER_LINE.finditer(log_text)
    }


def test_llama_server_splits_a_model_over_two_rpc_servers(
    rpc_binaries: tuple[list[str], list[str]], four_layer_gguf: Path, tmp_path: Path
) -> None:
    llama_server, rpc_server = rpc_binaries
    rpc_ports = [free_port(HOST), free_port(HOST)]
    endpoints = [f"{HOST}:{port}" for port in rpc_ports]
    http_port = free_port(HOST)
    server_log = tmp_path / "llama-server.log"

    with ExitStack() as stack:
        for port in rpc_ports:
            log = tmp_path / f"rpc-server-{port}.log"
            cmd = [*rpc_server, "-H", HOST, "-p", str(port), "-d", "CPU", "-t", "1"]
            wait_for_port(stack.enter_context(process(cmd, log)), port, log)

        cmd = [
            *llama_server,
            "-m", str(four_layer_gguf),
            "--host", HOST,
            "--port", str(http_port),
            "--rpc", ",".join(endpoints),
            "--tensor-split", "1,1",
            "-ngl", "999",
            "-c", "512",
            "--parallel", "1",
            "-t", "1",
            "-lv", LOG_VERBOSITY,
        ]  # fmt: skip
        server = stack.enter_context(process(cmd, server_log))
        base = f"http://{HOST}:{http_port}"
        wait_healthy(server, base, server_log, "llama-server", HEALTH_TIMEOUT_S)

        response = httpx.post(
            f"{base}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
            timeout=30.0,
        )
        assert response.status_code == 200, response.text
        choices = response.json()["choices"]
        assert len(choices) == 1 and choices[0]["message"]["role"] == "assistant", choices
        assert isinstance(choices[0]["message"]["content"], str)

        log_text = server_log.read_text(errors="replace")
        buffers = remote_buffers(log_text)
        for endpoint in endpoints:
            for kind in ("model", "KV"):
                assert buffers.get((endpoint, kind), 0.0) > 0.0, (
                    f"no {kind} buffer on RPC endpoint {endpoint}; buffers seen: {buffers}\n"
                    f"{tail(server_log)}"
                )
        assert set(endpoint for endpoint, _ in buffers) == set(endpoints), buffers
        offloaded = OFFLOADED_LINE.search(log_text)
        assert offloaded and offloaded["done"] == offloaded["total"], tail(server_log)
