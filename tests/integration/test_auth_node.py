"""The node and CLI side of authentication: the credentials file's permissions, the server's
first-start credentials, the node API's logs refusing an unauthenticated call, and a backend
process started without the node's secrets in its environment."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gpufleet import credentials
from gpufleet.node import node_auth, processes
from gpufleet.node.context import NodeContext
from gpufleet.node.log_server import create_log_app
from gpufleet.node.registry import BackendRegistry
from gpufleet.server.app import create_app
from gpufleet.server.bootstrap import JOIN_FILE, bootstrap
from gpufleet.store import keys as key_store


def test_credentials_file_is_written_0600_and_a_wider_one_is_refused(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("GPUFLEET_HOME", str(tmp_path))
    monkeypatch.delenv(credentials.API_KEY_ENV, raising=False)
    path = credentials.credentials_path()
    credentials.write_private_json(path, {"api_key": "gf_abcdefgh_" + "k" * 43})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert credentials.api_key() == "gf_abcdefgh_" + "k" * 43
    monkeypatch.setenv(credentials.API_KEY_ENV, "from-env")
    assert credentials.api_key() == "from-env"  # the environment wins
    monkeypatch.delenv(credentials.API_KEY_ENV)
    path.chmod(0o644)
    with pytest.raises(credentials.CredentialsError, match=f"chmod 600 {path}"):
        credentials.api_key()
    # the CLI says so and exits non-zero, sending nothing
    proc = subprocess.run([sys.executable, "-m", "gpufleet.cli.main", "ls"], capture_output=True, text=True,
                          env={**os.environ, "GPUFLEET_HOME": str(tmp_path), "GPUFLEET_SERVER_URL": "http://127.0.0.1:9"},
                          timeout=60)
    assert proc.returncode == 1 and "readable by other users" in proc.stderr and "chmod 600" in proc.stderr


def test_first_start_creates_one_admin_key_a_join_token_and_a_controller_key(tmp_path: Path) -> None:
    app = create_app(f"sqlite:///{tmp_path / 'db.sqlite'}", trigger=lambda *_: "", run_controller=False)
    state = app.state.gpufleet
    first = bootstrap(state, tmp_path, 8470)
    assert first.admin_key is not None
    for name in (credentials.FILE_NAME, JOIN_FILE):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert credentials.read_private_json(tmp_path / credentials.FILE_NAME) == {"api_key": first.admin_key}
    second = bootstrap(state, tmp_path, 8470)  # a restart: no new admin key, the same join token
    assert second.admin_key is None and second.join_token == first.join_token
    with state.session() as s:
        names = sorted(k.name for k in key_store.list_keys(s))
        assert key_store.verify(s, first.controller_key) is None  # replaced by the restart's
        assert key_store.verify(s, second.controller_key).principal.is_admin  # type: ignore[union-attr]
    assert names == ["admin", f"controller:{os.uname().nodename}:8470", "join-token"]
    http = TestClient(app)
    assert http.get("/v1/keys", headers={"Authorization": f"Bearer {first.admin_key}"}).status_code == 200


def test_node_logs_refuse_a_call_without_the_servers_credential(tmp_path: Path) -> None:
    node = NodeContext("node-a", tmp_path, "127.0.0.1")
    node.logs_dir.mkdir(parents=True)
    (node.logs_dir / "7-chat-7.log").write_text("a prompt that is nobody's business\n")
    app = create_log_app(node, BackendRegistry(node.backends_dir), server_key=lambda: "gfs_server_secret")
    http = TestClient(app)
    r = http.get("/v1/instances/7/logs")
    assert r.status_code == 401 and "prompt" not in r.text
    assert http.get("/v1/instances/7/logs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = http.get("/v1/instances/7/logs", headers={"Authorization": "Bearer gfs_server_secret"})
    assert r.status_code == 200 and "a prompt" in r.text
    assert http.get("/v1/health").status_code == 200


def test_node_credentials_file_is_private(tmp_path: Path) -> None:
    creds = node_auth.NodeCredentials(worker="node-a", node_key="gf_x", server_key="gfs_y")
    credentials.write_private_json(node_auth.path_of(tmp_path), creds.model_dump())
    assert node_auth.load(tmp_path, "node-a") == creds
    assert node_auth.load(tmp_path, "node-b") is None  # another node's name: not this node's
    node_auth.path_of(tmp_path).chmod(0o640)
    with pytest.raises(credentials.CredentialsError):
        node_auth.load(tmp_path, "node-a")


def test_backend_starts_without_the_nodes_secrets(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("HF_TOKEN", "hf_NODE_SECRET")
    monkeypatch.setenv(credentials.API_KEY_ENV, "gf_node_credential_SECRET")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws_SECRET")
    monkeypatch.setenv("SOME_UNRELATED_SETTING", "node-only")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    pid, start = processes.spawn(["sleep", "30"], {"DEPLOYMENT_VAR": "mine", "HF_TOKEN": "hf_DEPLOYMENT_OWN"},
                                 tmp_path / "b.log", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 5
        while True:  # read once the program runs (its own environment, not the parent's copy before exec)
            environ = dict(line.split("=", 1) for line in
                           Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in line)
            if "DEPLOYMENT_VAR" in environ or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        processes.terminate(pid, start, grace=1)
    assert "NODE_SECRET" not in str(environ) and "SECRET" not in environ.get(credentials.API_KEY_ENV, "")
    assert credentials.API_KEY_ENV not in environ and "AWS_SECRET_ACCESS_KEY" not in environ
    assert "SOME_UNRELATED_SETTING" not in environ
    assert environ["DEPLOYMENT_VAR"] == "mine" and environ["HF_TOKEN"] == "hf_DEPLOYMENT_OWN"  # its own
    assert environ["PATH"] == os.environ["PATH"] and environ["OMP_NUM_THREADS"] == "2"


@pytest.mark.parametrize("args, words", [
    (["--expires", "soon"], "--expires: expiry 'soon' is not a duration"),
    (["--role", "node"], "cannot be created by hand"),
    (["--role", "boss"], "--role"),
])
def test_keys_create_refuses_bad_input_before_sending_anything(tmp_path: Path, args: list[str], words: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "gpufleet.cli.main", "keys", "create", "--name", "x", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "GPUFLEET_HOME": str(tmp_path), "GPUFLEET_SERVER_URL": "http://127.0.0.1:9"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert words in " ".join(proc.stderr.split()) and "cannot reach" not in proc.stderr
