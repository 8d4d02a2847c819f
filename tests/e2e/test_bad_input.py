"""Bad input gets a clear error, a non-zero exit or a 4xx, and changes nothing."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import E2ECluster


def state(cluster: E2ECluster) -> tuple[list, list]:
    deps = sorted((d["name"], d["replicas"], d["generation"]) for d in cluster.cli_json("ls"))
    insts = sorted((i["id"], i["state"]) for i in cluster.instances())
    return deps, insts


def corrupt_gguf(tmp: Path) -> str:
    f = tmp / "corrupt.gguf"
    f.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 32)
    return str(f)


def not_gguf(tmp: Path) -> str:
    f = tmp / "notes.gguf"
    f.write_text("just some text, not a model\n")
    return str(f)


CASES = [
    ("two model sources", lambda t, g: ["deploy", "--name", "x1", "--local-path", str(g), "--hf", "org/m"],
     "exactly one of --local-path PATH, --hf REPO or --modelscope REPO"),
    ("no model source", lambda t, g: ["deploy", "--name", "x1"], "exactly one of --local-path PATH"),
    ("file with a local path", lambda t, g: ["deploy", "--name", "x1", "--local-path", str(g), "--file", "*.gguf"],
     "--file and --revision apply to --hf and --modelscope"),
    ("unknown strategy", lambda t, g: ["deploy", "--name", "x1", "--local-path", str(g), "--placement", "fill"],
     "placement.strategy"),
    ("malformed worker selector", lambda t, g: ["deploy", "--name", "x1", "--local-path", str(g),
                                                "--worker-selector", "gpu in a,b"],
     "invalid worker selector 'gpu in a,b'"),
    ("malformed GPU selection", lambda t, g: ["deploy", "--name", "x1", "--local-path", str(g), "--gpu", "node-a"],
     "invalid GPU selection 'node-a': use WORKER:INDEX"),
    ("backend that cannot read GGUF", lambda t, g: ["deploy", "--name", "x1", "--local-path", str(g),
                                                    "--backend", "vllm"],
     "vllm cannot serve GGUF files; use llama.cpp or llama-box"),
    ("backend no worker reports", lambda t, g: ["deploy", "--name", "x1", "--local-path", str(g),
                                                "--backend", "llama-box"],
     "no worker can run llama-box: llama-box is not installed by gpufleet; deploy GGUF models with --backend llama.cpp"),
    ("backend version no worker has", lambda t, g: ["deploy", "--name", "x1", "--local-path", str(g),
                                                    "--backend-version", "b99999"],
     "unknown llama.cpp version b99999"),
    ("malformed memory flag", lambda t, g: ["deploy", "--name", "x1", "--local-path", str(g),
                                            "--backend-param=--cache-type-k=q9"],
     "--cache-type-k"),
    ("corrupt GGUF", lambda t, g: ["deploy", "--name", "x2", "--local-path", corrupt_gguf(t)],
     "is not a valid GGUF file"),
    ("not a GGUF at all", lambda t, g: ["deploy", "--name", "x3", "--local-path", not_gguf(t)],
     "is not a valid GGUF file"),
    ("negative replicas", lambda t, g: ["deploy", "--name", "x4", "--local-path", str(g), "--replicas", "-1"],
     "--replicas must be 0 or more"),
    ("invalid name", lambda t, g: ["deploy", "--name", "Bad_Name", "--local-path", str(g)],
     "invalid deployment name 'Bad_Name'"),
    ("malformed backend param", lambda t, g: ["deploy", "--name", "x5", "--local-path", str(g),
                                              "--backend-param=ctx-size=1024"],
     "must start with '-'"),
    ("managed backend param", lambda t, g: ["deploy", "--name", "x6", "--local-path", str(g),
                                            "--backend-param=--port=1"],
     "--port is set by gpufleet"),
    ("duplicate name", lambda t, g: ["deploy", "--name", "keeper", "--local-path", str(g)],
     "deployment 'keeper' already exists"),
    ("scale unknown", lambda t, g: ["scale", "nope", "2"], "deployment 'nope' not found"),
    ("scale negative", lambda t, g: ["scale", "keeper", "-1"], "replicas must be 0 or more"),
    ("rm unknown", lambda t, g: ["rm", "nope"], "deployment 'nope' not found"),
    ("edit unknown", lambda t, g: ["edit", "nope", "--backend-param=--ctx-size=1"], "deployment 'nope' not found"),
    ("edit malformed", lambda t, g: ["edit", "keeper", "--backend-param=--ctx-size=big"],
     "--ctx-size must be a non-negative integer"),
    # issue 17: deploy and edit both check the flags against the engine's --help
    ("unknown engine flag at deploy", lambda t, g: ["deploy", "--name", "x7", "--local-path", str(g),
                                                    "--backend-param=--no-such-flag"],
     "backend parameter --no-such-flag is not a llama.cpp"),
    ("unknown engine flag at edit", lambda t, g: ["edit", "keeper", "--backend-param=--no-such-flag"],
     "backend parameter --no-such-flag is not a llama.cpp"),
    # issue 17: a wait of 0 or less seconds is refused
    ("negative timeout", lambda t, g: ["scale", "keeper", "2", "--timeout", "-5"],
     "Invalid value for '--timeout': must be more than 0 seconds, got -5"),
    ("zero timeout", lambda t, g: ["deploy", "--name", "x8", "--local-path", str(g), "--timeout", "0"],
     "Invalid value for '--timeout': must be more than 0 seconds, got 0"),
    ("rm-instance unknown", lambda t, g: ["rm-instance", "99999"], "instance 99999 not found"),
    ("logs unknown", lambda t, g: ["logs", "99999"], "instance 99999 not found"),
]


@pytest.fixture(scope="module")
def keeper(cluster: E2ECluster, tiny_gguf: Path):  # noqa: ANN201
    cluster.cli("deploy", "--name", "keeper", "--local-path", str(tiny_gguf))
    yield
    cluster.cli("rm", "keeper")


@pytest.mark.parametrize(("args", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cli_bad_input(cluster: E2ECluster, keeper: None, tiny_gguf: Path, tmp_path: Path, args, message: str) -> None:  # noqa: ANN001
    before = state(cluster)
    proc = cluster.cli(*args(tmp_path, tiny_gguf), check=False, timeout=60)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert state(cluster) == before


def test_api_bad_input(cluster: E2ECluster, keeper: None, tiny_gguf: Path) -> None:
    before = state(cluster)
    api = cluster.api_url
    body = {"name": "y", "replicas": -1, "source": {"kind": "local_path", "local_path": str(tiny_gguf)}}
    auth = cluster.headers
    r = httpx.post(f"{api}/v1/deployments", json=body, headers=auth)
    assert r.status_code == 422 and "replicas" in r.text
    r = httpx.post(f"{api}/v1/deployments", json={**body, "replicas": 1, "colour": "red"}, headers=auth)
    assert r.status_code == 422 and "colour" in r.text  # unknown fields are refused, not ignored
    r = httpx.post(f"{api}/v1/deployments", json={**body, "replicas": 1, "source": {"kind": "local_path"}}, headers=auth)
    assert r.status_code == 422 and "local_path" in r.text
    assert httpx.get(f"{api}/v1/deployments/nope", headers=auth).status_code == 404
    assert httpx.post(f"{api}/v1/deployments/keeper/scale", json={"replicas": "many"}, headers=auth).status_code == 422
    assert state(cluster) == before
