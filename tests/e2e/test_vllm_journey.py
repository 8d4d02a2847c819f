"""Safetensors models on vLLM, end to end: a real Prefect server, the gpufleet server, a node
agent with two declared 8 GiB GPUs, and real vLLM servers (the CPU build, since the GPUs are
declared) started by the node from gpufleet's launch description.

The journey a user takes: deploy a chat model with 2 replicas (each on its own GPU, vLLM does not
share), get an answer from both under the deployment's name, read a replica's log, delete it
(the processes go); then deploy an embedding model and get its vectors.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gpufleet.core.backends.registry import VLLM
from gpufleet.runtimes import environments
from tests.e2e.conftest import E2ECluster, cmdline, pid_alive, wait_until
from tests.integration.test_vllm_runtime import vllm_engine_root  # noqa: F401 - the session fixture
from tests.support.vllm_models import EMBEDDING_HIDDEN, write_tiny_chat_model, write_tiny_embedding_model

pytestmark = pytest.mark.vllm

NODE = "node-v"
VGPUS = "L4-8G:2"  # 0.9 × 8 GiB = 7.2 GiB claimed per replica ≥ need ≈ 4.8 (activation) + 0.15 GiB
PARAMS = ["--backend-param=--max-model-len=256", "--backend-param=--enforce-eager"]
WAIT = "900"  # two vLLM starts at once on 2 cores: ~2–3 min; generous for a busy CI machine


def arg_after(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(p.split("=", 1) for p in pairs if "=" in p)


@pytest.fixture(scope="module")
def vllm_node(cluster: E2ECluster, vllm_engine_root: Path) -> str:  # noqa: F811
    cluster.start_node(NODE, virtual_gpus=VGPUS, labels={"pool": "vllm"},
                       env={"GPUFLEET_ENGINES_HOME": str(vllm_engine_root)})
    return NODE


def test_chat_model_on_vllm_with_two_replicas(cluster: E2ECluster, vllm_node: str, vllm_engine_root: Path,  # noqa: F811
                                              tmp_path: Path) -> None:
    python = environments.python_of(vllm_engine_root, "vllm", VLLM.default_version, "cpu")
    assert python is not None
    model = write_tiny_chat_model(python, tmp_path / "tiny-chat")

    # the node reports the engine it has: vLLM's CPU build, pinned version
    [worker] = [w for w in cluster.cli_json("workers") if w["name"] == vllm_node]
    assert {"engine": "vllm", "version": VLLM.default_version} in [
        {"engine": e["engine"], "version": e["version"]} for e in worker["engines"]]

    out = cluster.cli("deploy", "--name", "chat-v", "--local-path", str(model), "--replicas", "2",
                      "--worker-selector", "pool=vllm", *PARAMS, "--timeout", WAIT, timeout=float(WAIT) + 60)
    assert "deployment chat-v created with 2 replica(s)" in out.stdout
    [dep] = [d for d in cluster.cli_json("ls") if d["name"] == "chat-v"]
    assert (dep["backend"], dep["ready_replicas"]) == ("vllm", 2)
    insts = cluster.instances("chat-v")
    assert sorted(tuple(i["gpu_indexes"]) for i in insts) == [(0,), (1,)]  # one GPU each: vLLM is exclusive
    for inst in insts:
        assert inst["state"] == "RUNNING" and inst["worker"] == vllm_node
        cmd = cmdline(inst["pid"])
        assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
        assert Path(cmd[0]).is_relative_to(vllm_engine_root)  # the engine's own environment
        assert arg_after(cmd, "--served-model-name") == "chat-v"
        assert arg_after(cmd, "--tensor-parallel-size") == "1"
        assert arg_after(cmd, "--max-model-len") == "256"
        env = environ(inst["pid"])
        assert env["CUDA_VISIBLE_DEVICES"] == ""  # declared GPUs: the CPU build does the work
        assert int(env["VLLM_CPU_KVCACHE_SPACE"]) >= 1
        resp = httpx.post(f"http://127.0.0.1:{inst['port']}/v1/chat/completions", timeout=120,
                          json={"model": "chat-v", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert resp.status_code == 200, resp.text
        assert resp.json()["model"] == "chat-v"
        assert isinstance(resp.json()["choices"][0]["message"]["content"], str)

    log = cluster.cli("logs", str(insts[0]["id"]), "--tail", "200").stdout
    assert "vllm" in log.lower() and "served-model-name" in log  # gpufleet's start line, then vLLM's own

    pids = [i["pid"] for i in insts]
    cluster.cli("rm", "chat-v")
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=60, what="vLLM processes to stop")


def test_embedding_model_on_vllm(cluster: E2ECluster, vllm_node: str, vllm_engine_root: Path,  # noqa: F811
                                 tmp_path: Path) -> None:
    python = environments.python_of(vllm_engine_root, "vllm", VLLM.default_version, "cpu")
    assert python is not None
    model = write_tiny_embedding_model(python, tmp_path / "tiny-embed")
    cluster.cli("deploy", "--name", "embed-v", "--local-path", str(model), "--worker-selector", "pool=vllm",
                *PARAMS, "--timeout", WAIT, timeout=float(WAIT) + 60)
    [dep] = [d for d in cluster.cli_json("ls") if d["name"] == "embed-v"]
    assert dep["backend"] == "vllm"
    [inst] = cluster.instances("embed-v")
    assert arg_after(cmdline(inst["pid"]), "--runner") == "pooling"  # chosen from the embedding category
    resp = httpx.post(f"http://127.0.0.1:{inst['port']}/v1/embeddings", timeout=120,
                      json={"model": "embed-v", "input": ["hello", "a second text"]})
    assert resp.status_code == 200, resp.text
    vectors = [d["embedding"] for d in resp.json()["data"]]
    assert len(vectors) == 2 and all(len(v) == EMBEDDING_HIDDEN for v in vectors)
    assert vectors[0] != vectors[1]
    cluster.cli("rm", "embed-v")


def test_a_misspelt_vllm_flag_is_refused_at_deploy(cluster: E2ECluster, vllm_node: str,  # noqa: F811
                                                    tmp_path: Path) -> None:
    # The node read vLLM's `--help=all` once and reported its flags with the engine; the server
    # checks the parameters against them before anything is created.
    [worker] = [w for w in cluster.cli_json("workers") if w["name"] == vllm_node]
    [vllm] = [e for e in worker["engines"] if e["engine"] == "vllm"]
    assert {"--max-model-len", "--enforce-eager", "--gpu-memory-utilization"} <= set(vllm["flags"])
    model = tmp_path / "on-the-workers-only"  # a path the server cannot see: the check does not need the model
    out = cluster.cli("deploy", "--name", "typo-v", "--local-path", str(model), "--backend", "vllm",
                      "--worker-selector", "pool=vllm", "--backend-param=--max-model-lenn=256", check=False)
    assert out.returncode != 0
    assert "--max-model-lenn is not a vllm" in out.stderr and "did you mean --max-model-len" in out.stderr
    assert "typo-v" not in [d["name"] for d in cluster.cli_json("ls")]  # nothing half-created
