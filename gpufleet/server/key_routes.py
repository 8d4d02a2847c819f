"""``/v1/keys`` (admin: create, list, delete API keys) and ``/v1/nodes/join`` (a join token
buys a node its own credential).

A created token is in the answer once and nowhere else: the database keeps its SHA-256.
Deleting a key clears this server's verification cache, so the key is refused from the next
request on (other server processes: within gpufleet.server.auth.CACHE_TTL_S).
"""

from __future__ import annotations

import secrets

from fastapi import FastAPI, HTTPException, Request

from gpufleet.core.access import Principal, Role
from gpufleet.core.keys import JOIN_ROLE, JoinRequest, KeyCreate, KeyCreated, KeyView, NodeCredentials, parse_duration
from gpufleet.core.schemas import _NAME_RE  # noqa: PLC2701 - the one name rule of workers and deployments
from gpufleet.server.auth import Authenticator, principal_of
from gpufleet.server.bootstrap import CONTROLLER_PREFIX
from gpufleet.store import keys as key_store


def add_key_routes(app: FastAPI, state, auth: Authenticator) -> None:  # noqa: ANN001 - ServerState
    @app.post("/v1/keys", status_code=201)
    def create_key(body: KeyCreate) -> KeyCreated:
        """The token is shown in this answer only; keep it (the server stores its hash)."""
        expires = parse_duration(body.expires_in) if body.expires_in else None
        with state.session() as s:
            return key_store.create_key(s, body.name, body.role.value, body.models, expires)

    @app.get("/v1/whoami")
    def whoami(request: Request) -> Principal:
        """Who the caller's key is: a ``gpufleet gateway`` process asks this for each new key
        (gpufleet.gateway.remote_auth); any user key may ask about itself."""
        return principal_of(request)

    @app.get("/v1/keys")
    def list_keys() -> list[KeyView]:
        with state.session() as s:
            return key_store.list_keys(s)

    @app.delete("/v1/keys/{ref}")
    def delete_key(ref: str) -> KeyView:
        """By id, prefix or (unique) name. Refused for the last admin key a person holds."""
        with state.session() as s:
            try:
                row = key_store.find(s, ref)
            except LookupError as exc:
                raise HTTPException(409, str(exc)) from exc
            if row is None:
                raise HTTPException(404, f"no key {ref!r}; `gpufleet keys ls` lists them")
            if row.role == Role.ADMIN.value and not row.name.startswith(CONTROLLER_PREFIX):
                people = [k for k in key_store.list_keys(s) if k.role == Role.ADMIN.value and not k.expired
                          and not k.name.startswith(CONTROLLER_PREFIX)]
                if [k.id for k in people] == [row.id]:
                    raise HTTPException(409, f"key {row.name} is the last admin key; create another admin key "
                                             "first (`gpufleet keys create --role admin`), then remove this one")
            shown = key_store.view(row)
            key_store.delete_key(s, row)
        auth.forget_all()
        return shown

    @app.post("/v1/join-tokens", status_code=201)
    def create_join_token(request: Request) -> KeyCreated:
        """A new join token (admin; the route is under the admin rule by path)."""
        with state.session() as s:
            return key_store.create_key(s, "join-token", JOIN_ROLE)

    @app.post("/v1/nodes/join")
    def join(body: JoinRequest) -> NodeCredentials:
        """With a join token: a node credential for worker ``name`` (role node, this worker only)
        and the credential the server will present to that node. A node that joins again under
        the same name replaces its earlier credentials."""
        if not _NAME_RE.match(body.name):
            raise HTTPException(400, f"invalid node name {body.name!r}: lowercase letters, digits and '-'")
        server_key = "gfs_" + secrets.token_urlsafe(32)
        with state.session() as s:
            key_store.delete_where(s, role=Role.NODE.value, worker=body.name)
            created = key_store.create_key(s, f"node:{body.name}", Role.NODE.value, worker=body.name,
                                           peer_token=server_key)
        auth.forget_all()
        return NodeCredentials(worker=body.name, node_key=created.token, server_key=server_key)
