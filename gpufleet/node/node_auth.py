"""A node's credentials: obtained once with the server's join token, then kept in the node's
home (``credentials.json``, mode 0600) and used for everything the node sends the server.

The file also holds the credential the server presents to this node's own API (logs): the
node requires it there (gpufleet.node.log_server). A node with no credentials and no join
token registers without a key, which only a server with authentication off accepts.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

from gpufleet import credentials
from gpufleet.client import ApiError, GpufleetClient
from gpufleet.core.keys import NodeCredentials

log = logging.getLogger("gpufleet.node")
FILE_NAME = "credentials.json"


class JoinFailed(RuntimeError):
    pass


def path_of(node_home: Path) -> Path:
    return node_home / FILE_NAME


def load(node_home: Path, name: str) -> NodeCredentials | None:
    data = credentials.read_private_json(path_of(node_home))
    if not data:
        return None
    creds = NodeCredentials.model_validate(data)
    return creds if creds.worker == name else None


def join(server_url: str, name: str, join_token: str, node_home: Path) -> NodeCredentials:
    """Trade the join token for this node's credentials and keep them (0600)."""
    with GpufleetClient(server_url, api_key=join_token, retries=8) as c:
        try:
            creds = c.join(name)
        except ApiError as exc:
            raise JoinFailed(f"the server at {server_url} refused to let node {name} join: {exc.detail}; "
                             "check the join token (`gpufleet keys join-token` makes a new one)") from exc
    credentials.write_private_json(path_of(node_home), creds.model_dump())
    log.info("node %s joined %s; its credential is in %s", name, server_url, path_of(node_home))
    return creds


def forget(node_home: Path) -> None:
    path_of(node_home).unlink(missing_ok=True)


def use_in_process(creds: NodeCredentials | None) -> None:
    """This node's flows (in-process worker) call the server with the node's own key — never a
    key this process inherited (e.g. an admin's GPUFLEET_API_KEY)."""
    if creds is None:
        os.environ.pop(credentials.API_KEY_ENV, None)
    else:
        os.environ[credentials.API_KEY_ENV] = creds.node_key


def server_may_call(expected: str | None, authorization: str | None) -> bool:
    """Does a request to this node's API carry the server's credential? (None expected: this
    node never joined, its server runs without authentication.)"""
    if expected is None:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode())
