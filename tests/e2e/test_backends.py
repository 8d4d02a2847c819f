"""`gpufleet backends install` for real: an `install-backend` flow run through Prefect on a
real node, its progress in the CLI, the node's new engine list on the server, and the
deploy-time version check against it.

Which install is real here: a fresh vLLM environment is gigabytes and minutes of pip, so
the node installing vLLM uses the machine's engine cache (`GPUFLEET_ENGINES_HOME`), which
the test command fills once per machine (`python -m gpufleet.runtimes.environments install
vllm 0.32.0 cpu`). The run then goes through the real flow, task, file lock and stamp check
and returns at once; on a machine without that cache it performs the whole install (slow,
but the same code). To show the lock at work, the test holds the environment's lock itself
while a run is going: the run must say it waits and must not finish until the lock is freed.
Fresh pip installs into a new environment are covered by the environments module's own
tests (a tiny real package through the same `install`).
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpufleet.cli.embedded import _spawn, _wait_for_worker
from gpufleet.runtimes import environments
from tests.e2e.conftest import E2ECluster, wait_until

NODE = "node-eng"
INSTALL_TIMEOUT_S = 3600  # only reached on a machine whose engine cache is empty


def start_node(cluster: E2ECluster, name: str, **env: str) -> None:
    args = [sys.executable, "-m", "gpufleet.cli.main", "node", "--name", name, "--server", cluster.api_url,
            "--stop-backends-on-exit"]
    child = _spawn(f"node-{name}", args, {**cluster.env, **env}, cluster.home / "logs")
    _wait_for_worker(cluster.api_url, name, child, 60, cluster.api_key)
    cluster.children.append(child)


@pytest.fixture(scope="module")
def engines_node(cluster: E2ECluster) -> Path:
    """A node whose engines root is the machine's engine cache."""
    root = environments.machine_cache_root()
    start_node(cluster, NODE, GPUFLEET_ENGINES_HOME=str(root))
    return root


def install(cluster: E2ECluster, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "gpufleet.cli.main", "backends", "install", *args],
                            env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def listed(cluster: E2ECluster, node: str) -> list[tuple[str, str, tuple[str, ...], str]]:
    return [(e["engine"], e["version"], tuple(e["devices"]), e["location"])
            for e in cluster.cli_json("backends", "ls", "--node", node)]


def test_install_vllm_through_a_flow_run_on_the_node(cluster: E2ECluster, engines_node: Path) -> None:
    env_dir = environments.environment_dir(engines_node, "vllm", "0.32.0", "cpu")
    # 1. Bring the environment to complete (at once when the machine cache has it).
    first = install(cluster, "vllm", "0.32.0", "--node", NODE, "--device", "cpu")
    out, err = first.communicate(timeout=INSTALL_TIMEOUT_S)
    assert first.returncode == 0, (out, err)
    assert "vllm 0.32.0 installed on node-eng" in out
    assert ("vllm", "0.32.0", ("cpu",), str(env_dir)) in listed(cluster, NODE)

    # 2. Concurrent-safe: while another install holds the environment's lock, a run waits
    #    (and says so), and it finishes only once the lock is released; then it finds it done.
    with open(environments.lock_path(env_dir), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiting = install(cluster, "vllm", "0.32.0", "--node", NODE, "--device", "cpu")
        try:
            time.sleep(15)  # the run starts on the node within seconds and blocks on the lock
            assert waiting.poll() is None, waiting.communicate()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, (out, err)
    assert "another install of vllm 0.32.0 (cpu) holds" in out and "waiting for it" in out
    assert f"vllm 0.32.0 (cpu) already installed in {env_dir}" in out  # progress lines from the run log

    # 3. Idempotent: installed again, it returns at once (no pip run).
    started = time.monotonic()
    again = cluster.cli("backends", "install", "vllm", "0.32.0", "--node", NODE, "--device", "cpu")
    assert "already installed" in again.stdout and "pip install" not in again.stdout
    assert time.monotonic() - started < 60

    # 4. The server knows: the workers view, and deploys pinned to that version.
    workers = {w["name"]: w for w in cluster.cli_json("workers")}
    assert any(e["engine"] == "vllm" and e["version"] == "0.32.0" for e in workers[NODE]["engines"])
    table = cluster.cli("workers").stdout
    row = next(line for line in table.splitlines() if line.split() and line.split()[0] == NODE)
    assert "vllm 0.32.0 (cpu)" in row and f" {workers[NODE]['runtime']} " in row  # as the node reported it


def test_deploy_checks_the_version_against_the_nodes(cluster: E2ECluster, engines_node: Path,
                                                     tmp_path: Path) -> None:
    from tests.support import synthetic_models as sm

    head, size = sm.safetensors_header(sm.llama_hf_tensors(layers=2, hidden=64, heads=4, kv_heads=2, ff=128,
                                                            vocab=100))
    with (tmp_path / "model.safetensors").open("wb") as f:
        f.write(head)
        f.truncate(size)
    (tmp_path / "config.json").write_bytes(sm.llama_config(2, 64, 4, 2, 128, 100))
    wait_until(lambda: any(e["engine"] == "vllm" and e["version"] == "0.32.0"
                           for w in cluster.cli_json("workers") for e in w["engines"]),
               timeout=30, what="the engines node to report vllm 0.32.0")
    before = cluster.cli_json("ls")
    refused = cluster.cli("deploy", "--name", "pinned", "--local-path", str(tmp_path), "--backend", "vllm",
                          "--backend-version", "0.31.0", "--replicas", "0", check=False)
    assert refused.returncode == 1
    text = " ".join(refused.stderr.split())
    assert "vllm 0.31.0 is not installed on any ready worker" in text and f"{NODE}: 0.32.0 (cpu)" in text
    assert "gpufleet backends install vllm 0.31.0 --node N" in text
    assert cluster.cli_json("ls") == before
    cluster.cli("deploy", "--name", "pinned", "--local-path", str(tmp_path), "--backend", "vllm",
                "--backend-version", "0.32.0", "--replicas", "0")
    (dep,) = [d for d in cluster.cli_json("ls") if d["name"] == "pinned"]
    assert dep["backend_version"] == "0.32.0"
    cluster.cli("rm", "pinned")


def test_llama_cpp_install_without_the_build_script_fails_with_the_reason(cluster: E2ECluster) -> None:
    """A node installed without the repository's scripts/ cannot build llama.cpp: the run fails on
    the node, the CLI exits non-zero naming the missing script, and the node's engines are unchanged."""
    start_node(cluster, "node-noscript", GPUFLEET_LLAMA_CPP_BUILD_SCRIPT="/nonexistent/build-llama-cpp.sh")
    before = listed(cluster, "node-noscript")
    proc = cluster.cli("backends", "install", "llama.cpp", "b11434", "--node", "node-noscript", "--device", "cpu",
                       check=False, timeout=300)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "/nonexistent/build-llama-cpp.sh not found" in proc.stdout + proc.stderr
    assert "ended Failed" in " ".join(proc.stderr.split())
    assert listed(cluster, "node-noscript") == before
