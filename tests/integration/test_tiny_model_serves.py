"""The generated tiny model is a real model: llama.cpp (via xllamacpp) loads it
and answers an OpenAI-style chat request over HTTP.

The server runs in a subprocess so that llama.cpp's threads, logging and
global state never leak into the test process, and so the test can always
kill it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from gpufleet.demo.tiny_model import write_tiny_llama_gguf
from tests.support.servers import free_port, wait_healthy

import xllamacpp  # noqa: F401,E402 - a dependency: its absence must fail, not skip

HEALTH_TIMEOUT_S = 30.0

# Runs in the child: start llama.cpp's HTTP server in-process, then idle until
# killed. xllamacpp.Server() returns once the model is loaded and the socket
# is listening (it raises RuntimeError if either fails).
SERVER_SCRIPT = """
import sys, time
import xllamacpp as xlc

params = xlc.CommonParams()
params.model.path = sys.argv[1]
params.hostnames = ["127.0.0.1"]
params.port = int(sys.argv[2])
params.n_ctx = 512
params.n_parallel = 1
params.n_gpu_layers = 0
params.cpuparams.n_threads = 2
params.cpuparams_batch.n_threads = 2
params.model_alias = {"tiny"}
server = xlc.Server(params)
print("listening", server.listening_address, flush=True)
while True:
    time.sleep(3600)
"""


def test_tiny_model_serves_chat_completions(tmp_path: Path) -> None:
    model = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER_SCRIPT, str(model), str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(proc, base, log, timeout=HEALTH_TIMEOUT_S)
        response = httpx.post(
            f"{base}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
            timeout=30.0,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        message = body["choices"][0]["message"]
        assert message["role"] == "assistant"
        assert isinstance(message["content"], str)
        assert body["model"] == "tiny"
        assert body["usage"]["completion_tokens"] <= 8  # may stop early on a sampled EOS
    finally:
        proc.kill()
        proc.wait(timeout=10)
