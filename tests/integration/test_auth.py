"""Authentication and authorization of the gpufleet server, against the real app (its
middleware, routes and database): 401/403 per role, scoped keys, expiry, revocation, keys never
in logs, node credentials (a forged state report and a fake 1 TiB worker refused), loader
variables refused for operators, secret variables masked in the API and in Prefect's run
parameters, edit --env merging or replacing as asked."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gpufleet.core.access import Role
from gpufleet.core.secrets import MASK
from gpufleet.server.app import create_app
from gpufleet.store import keys as key_store

GiB = 1 << 30


class Recorder:
    """The flow trigger: records what would have been Prefect's run parameters."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, operation: str, parameters: dict[str, Any]) -> str:
        self.calls.append((operation, parameters))
        return ""


class Server:
    def __init__(self, tmp_path: Path, tiny_gguf: Path) -> None:
        self.trigger = Recorder()
        self.app = create_app(f"sqlite:///{tmp_path / 'db.sqlite'}", trigger=self.trigger, run_controller=False)
        self.http = TestClient(self.app)
        self.model = tiny_gguf
        self.admin = self.key("admin", Role.ADMIN)

    def key(self, name: str, role: Role | str, models: tuple[str, ...] = (), expires: timedelta | None = None,
            worker: str | None = None) -> str:
        with self.app.state.gpufleet.session() as s:
            return key_store.create_key(s, name, str(role), models, expires, worker=worker).token

    def call(self, method: str, path: str, key: str | None = None, **kwargs: Any):  # noqa: ANN201
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return self.http.request(method, path, headers=headers, **kwargs)

    def node_key(self, worker: str) -> str:
        join = self.key("join", "join")
        r = self.call("POST", "/v1/nodes/join", join, json={"name": worker})
        assert r.status_code == 200, r.text
        return r.json()["node_key"]

    def register(self, worker: str, key: str) -> None:
        r = self.call("POST", "/v1/workers", key, json=registration(worker))
        assert r.status_code == 200, r.text

    def deploy(self, name: str, key: str | None = None, **fields: Any):  # noqa: ANN201
        body = {"name": name, "replicas": 1, "source": {"local_path": str(self.model)}, **fields}
        return self.call("POST", "/v1/deployments", key or self.admin, json=body)


def registration(worker: str, memory: int = 32 * GiB) -> dict[str, Any]:
    return {"name": worker, "address": "http://127.0.0.1:1", "cpu_count": 4, "memory_total": memory,
            "work_queue": f"node-{worker}",
            "engines": [{"engine": "llama.cpp", "version": "b11434", "devices": ["cpu"], "default": True}]}


@pytest.fixture
def server(tmp_path: Path, tiny_gguf: Path) -> Server:
    return Server(tmp_path, tiny_gguf)


def test_open_routes_and_401_without_a_key(server: Server) -> None:
    for path in ("/v1/health", "/", "/docs", "/openapi.json"):
        assert server.call("GET", path).status_code == 200, path
    for method, path in [("GET", "/v1/deployments"), ("GET", "/v1/workers"), ("GET", "/v1/instances"),
                         ("POST", "/v1/deployments"), ("GET", "/v1/keys"), ("GET", "/metrics"),
                         ("GET", "/v1/cluster/snapshot"), ("PUT", "/v1/internal/instances/states")]:
        r = server.call(method, path)
        assert r.status_code == 401, (method, path, r.text)
        assert "missing API key" in r.json()["detail"]
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert server.call("GET", "/v1/deployments", "gf_abcdefgh_" + "x" * 43).status_code == 401
    assert server.call("GET", "/v1/deployments", server.admin).status_code == 200
    assert server.http.get("/v1/deployments", headers={"X-API-Key": server.admin}).status_code == 200


def test_gateway_paths_answer_in_the_openai_error_shape(server: Server) -> None:
    r = server.call("POST", "/v1/chat/completions", json={"model": "x", "messages": []})
    assert r.status_code == 401
    error = r.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key" and error["message"]
    node = server.node_key("node-a")
    r = server.call("GET", "/v1/models", node)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"


def test_roles(server: Server) -> None:
    assert server.deploy("chat").status_code == 202
    inference = server.key("app", Role.INFERENCE)
    operator = server.key("ops", Role.OPERATOR)
    r = server.call("GET", "/v1/deployments", inference)
    assert r.status_code == 403 and "inference keys call the OpenAI-compatible routes only" in r.json()["detail"]
    assert server.call("POST", "/v1/deployments/chat/scale", inference, json={"replicas": 2}).status_code == 403
    assert server.call("POST", "/v1/deployments/chat/scale", operator, json={"replicas": 2}).status_code == 202
    # key management and worker management: admin only
    assert server.call("GET", "/v1/keys", operator).status_code == 403
    assert server.call("POST", "/v1/keys", operator, json={"name": "x"}).status_code == 403
    assert server.call("DELETE", "/v1/workers/w", operator).status_code == 403
    # the controller's internal routes: admin only
    assert server.call("POST", "/v1/internal/deployments/chat/reconcile", operator).status_code == 403
    assert server.call("GET", "/v1/keys", server.admin).status_code == 200


def test_scoped_operator_sees_and_operates_only_its_deployments(server: Server) -> None:
    assert server.deploy("chat").status_code == 202
    assert server.deploy("embed").status_code == 202
    ops = server.key("chat-ops", Role.OPERATOR, models=("chat",))
    assert [d["name"] for d in server.call("GET", "/v1/deployments", ops).json()] == ["chat"]
    r = server.call("PATCH", "/v1/deployments/embed", ops, json={"backend_params": []})
    assert r.status_code == 403 and "not scoped to deployment 'embed'" in r.json()["detail"]
    assert server.call("DELETE", "/v1/deployments/embed", ops).status_code == 403
    assert server.call("POST", "/v1/deployments/chat/scale", ops, json={"replicas": 0}).status_code == 202
    r = server.deploy("other", ops)
    assert r.status_code == 403 and "may not operate deployment 'other'" in r.json()["detail"]


def test_expired_key_is_refused(server: Server) -> None:
    key = server.key("short", Role.ADMIN, expires=timedelta(milliseconds=300))
    assert server.call("GET", "/v1/deployments", key).status_code == 200  # cached from here on …
    time.sleep(0.4)
    r = server.call("GET", "/v1/deployments", key)  # … but never past its expiry
    assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_revoked_key_is_refused_at_once_and_keys_are_shown_once(server: Server) -> None:
    r = server.call("POST", "/v1/keys", server.admin, json={"name": "ci", "role": "operator", "expires_in": "30d"})
    assert r.status_code == 201, r.text
    created = r.json()
    token = created["token"]
    assert token.startswith(f"gf_{created['prefix']}_") and created["expires_at"]
    assert server.call("GET", "/v1/deployments", token).status_code == 200
    listed = server.call("GET", "/v1/keys", server.admin).json()
    assert all("token" not in k and token not in str(k) for k in listed)
    assert any(k["name"] == "ci" and k["last_used_at"] for k in listed)  # marked used (once a minute at most)
    with server.app.state.gpufleet.session() as s:  # the database holds its hash, not the token
        row = key_store.find(s, created["prefix"])
        assert row is not None and row.secret_hash == key_store.hash_token(token) and token not in str(vars(row))
    assert server.call("DELETE", f"/v1/keys/{created['prefix']}", server.admin).status_code == 200
    assert server.call("GET", "/v1/deployments", token).status_code == 401  # the cache was cleared


def test_bad_key_requests_are_refused_with_clear_errors(server: Server) -> None:
    for body, words in [({"name": "x", "role": "node"}, "cannot be created by hand"),
                        ({"name": "x", "expires_in": "soon"}, "not a duration"),
                        ({"name": "bad name!"}, "key name")]:
        r = server.call("POST", "/v1/keys", server.admin, json=body)
        assert r.status_code == 422 and words in r.text, r.text
    assert server.call("DELETE", "/v1/keys/nope", server.admin).status_code == 404
    r = server.call("DELETE", "/v1/keys/admin", server.admin)  # the last admin key: nobody could manage keys
    assert r.status_code == 409 and "last admin key" in r.json()["detail"]


def test_tokens_never_reach_the_logs(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret_part = server.admin.split("_", 2)[2]
    server.call("GET", "/v1/deployments", server.admin)
    r = server.call("GET", "/v1/deployments", server.admin[:-4] + "AAAA")
    assert r.status_code == 401 and secret_part[:-4] not in r.text
    server.call("POST", "/v1/keys", server.admin, json={"name": "logged"})
    assert secret_part not in caplog.text and "gf_" not in caplog.text.replace(f"gf_{server.admin[3:11]}", "")


def test_forged_state_report_and_fake_worker_are_refused(server: Server) -> None:
    node_a, node_b = server.node_key("node-a"), server.node_key("node-b")
    server.register("node-a", node_a)
    assert server.deploy("chat").status_code == 202
    r = server.call("POST", "/v1/internal/deployments/chat/reconcile", server.admin)  # placed on node-a
    assert r.status_code == 200, r.text
    [inst] = server.call("GET", "/v1/instances", server.admin).json()
    assert inst["worker"] == "node-a"
    forged = {"reports": {str(inst["id"]): {"state": "RUNNING", "message": "forged"}}}
    # an unauthenticated curl, a user key, another node: refused, nothing written
    assert server.call("PUT", "/v1/internal/instances/states", json=forged).status_code == 401
    assert server.call("PUT", "/v1/internal/instances/states", server.key("ops", Role.OPERATOR),
                       json=forged).status_code == 403
    r = server.call("PUT", "/v1/internal/instances/states", node_b, json=forged)
    assert r.status_code == 403 and "only report instances placed on it" in r.json()["detail"]
    r = server.call("PUT", f"/v1/internal/instances/{inst['id']}/state", node_b, json={"state": "RUNNING"})
    assert r.status_code == 403
    assert server.call("GET", f"/v1/instances/{inst['id']}", server.admin).json()["state"] != "RUNNING"
    # its own node may
    ok = {"reports": {str(inst["id"]): {"state": "STARTING", "message": "starting"}}}
    assert server.call("PUT", "/v1/internal/instances/states", node_a, json=ok).status_code == 200
    # a fake worker with 1 TiB of RAM: refused without a node credential, or under another node's name
    fake = registration("big", memory=1 << 40)
    assert server.call("POST", "/v1/workers", json=fake).status_code == 401
    assert server.call("POST", "/v1/workers", node_b, json=fake).status_code == 403
    assert server.call("POST", "/v1/workers", server.key("app", Role.INFERENCE), json=fake).status_code == 403
    assert server.call("POST", "/v1/workers/node-a/heartbeat", node_b).status_code == 403
    names = [w["name"] for w in server.call("GET", "/v1/workers", server.admin).json()]
    assert names == ["node-a"]
    # a join token does nothing but join
    join = server.key("join2", "join")
    assert server.call("GET", "/v1/deployments", join).status_code == 403
    assert server.call("POST", "/v1/nodes/join", server.admin, json={"name": "x"}).status_code == 403


def test_node_reads_only_its_own_instances_with_secrets_in_clear(server: Server) -> None:
    node_a, node_b = server.node_key("node-a"), server.node_key("node-b")
    server.register("node-a", node_a)
    r = server.deploy("chat", env={"PLAIN": "1", "HF_TOKEN": "hf_deploy_SECRET"}, secret_keys=["HF_TOKEN"])
    assert r.status_code == 202, r.text
    server.call("POST", "/v1/internal/deployments/chat/reconcile", server.admin)
    mine = server.call("GET", "/v1/instances", node_a).json()
    assert [i["config"]["env"]["HF_TOKEN"] for i in mine] == ["hf_deploy_SECRET"]
    assert server.call("GET", "/v1/instances", node_b).json() == []
    assert server.call("GET", "/v1/instances?worker=node-a", node_b).status_code == 403
    assert server.call("GET", f"/v1/instances/{mine[0]['id']}", node_b).status_code == 403
    assert server.call("DELETE", f"/v1/instances/{mine[0]['id']}", node_a).status_code == 403


def test_secret_env_is_masked_in_the_api_and_in_prefect_run_parameters(server: Server) -> None:
    r = server.deploy("chat", env={"PLAIN": "visible", "API_SECRET": "s3cr3t-value"}, secret_keys=["API_SECRET"])
    assert r.status_code == 202, r.text
    [(operation, params)] = server.trigger.calls
    assert operation == "deploy" and "s3cr3t-value" not in str(params)
    assert params["spec"]["env"] == {"PLAIN": "visible", "API_SECRET": MASK}
    for path in ("/v1/deployments", "/v1/deployments/chat"):
        assert "s3cr3t-value" not in server.call("GET", path, server.admin).text
    # the deploy flow registers the masked spec it was given: accepted as the same deployment
    r = server.call("PUT", "/v1/deployments/chat/record", server.admin, json=params["spec"])
    assert r.status_code == 200 and "s3cr3t-value" not in r.text
    with server.app.state.gpufleet.session() as s:
        from gpufleet.store.repository import _deployment  # noqa: PLC2701
        assert _deployment(s, "chat").config["env"]["API_SECRET"] == "s3cr3t-value"
    # the mask itself as a value is refused (it would store "***")
    r = server.deploy("copied", env={"API_SECRET": MASK}, secret_keys=["API_SECRET"])
    assert r.status_code == 400 and "the mask shown for secret values" in r.json()["detail"]
    r = server.call("PATCH", "/v1/deployments/chat", server.admin, json={"secret_env": {"API_SECRET": MASK}})
    assert r.status_code == 400
    # a masked value with nothing stored behind it is refused
    spec = {**params["spec"], "name": "other"}
    r = server.call("PUT", "/v1/deployments/other/record", server.admin, json=spec)
    assert r.status_code == 400 and "masked" in r.json()["detail"]


def test_edit_env_merges_or_replaces_as_asked(server: Server) -> None:
    assert server.deploy("chat", env={"A": "1", "B": "2"}).status_code == 202
    r = server.call("PATCH", "/v1/deployments/chat", server.admin, json={"env": {"B": "3", "C": "4"},
                                                                         "secret_env": {"S": "hidden"}})
    assert r.status_code == 200 and r.json()["env"] == {"A": "1", "B": "3", "C": "4", "S": MASK}
    r = server.call("PATCH", "/v1/deployments/chat", server.admin, json={"unset_env": ["A"]})
    assert r.json()["env"] == {"B": "3", "C": "4", "S": MASK} and r.json()["secret_keys"] == ["S"]
    r = server.call("PATCH", "/v1/deployments/chat", server.admin, json={"env": {"Z": "9"}, "env_replace": True})
    assert r.json()["env"] == {"Z": "9"} and r.json()["secret_keys"] == []


@pytest.mark.parametrize("name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "NODE_OPTIONS", "PERL5OPT"])
def test_loader_variables_are_for_admins_only(server: Server, name: str) -> None:
    ops = server.key("ops", Role.OPERATOR)
    r = server.deploy("chat", ops, env={name: "/tmp/evil.so"})
    assert r.status_code == 403
    assert f"only an admin may set {name}" in r.json()["detail"] and "change which code" in r.json()["detail"]
    assert server.call("GET", "/v1/deployments", server.admin).json() == []  # nothing written
    assert server.deploy("chat", ops).status_code == 202
    r = server.call("PATCH", "/v1/deployments/chat", ops, json={"secret_env": {name: "x"}})
    assert r.status_code == 403
    assert server.call("PATCH", "/v1/deployments/chat", server.admin, json={"env": {name: "/opt/lib"}}).status_code == 200


def test_auth_off_makes_everyone_an_admin(tmp_path: Path) -> None:
    app = create_app(f"sqlite:///{tmp_path / 'db.sqlite'}", trigger=Recorder(), run_controller=False, auth=False)
    http = TestClient(app)
    assert http.get("/v1/deployments").status_code == 200
    assert http.post("/v1/workers", json=registration("w")).status_code == 200


def test_keys_in_the_store_on_sqlite_and_postgresql(database_url: str) -> None:
    """Migration 0009 and the key store on both databases: create, verify, expire, scope, remove."""
    app = create_app(database_url, trigger=Recorder(), run_controller=False)
    state = app.state.gpufleet
    with state.session() as s:
        created = key_store.create_key(s, "ops", Role.OPERATOR.value, ["b", "a", "a"], timedelta(days=1))
        old = key_store.create_key(s, "old", Role.ADMIN.value, expires_in=timedelta(seconds=-1))
    assert created.models == ["a", "b"] and created.expires_at is not None
    with state.session() as s:
        verified = key_store.verify(s, created.token)
        assert verified is not None and verified.principal is not None
        assert verified.principal.may_operate("a") and not verified.principal.may_operate("c")
        assert key_store.verify(s, old.token) is None  # expired
        assert key_store.verify(s, created.token[:-1] + ("A" if created.token[-1] != "A" else "B")) is None
        assert [k.expired for k in key_store.list_keys(s)] == [False, True]
        row = key_store.find(s, "ops")
        assert row is not None
        key_store.delete_key(s, row)
    with state.session() as s:
        assert key_store.verify(s, created.token) is None
    state.engine.dispose()
