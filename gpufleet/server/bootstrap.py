"""Credentials a server makes for itself when it starts with authentication on.

- The first admin key, on the first start (no admin key in the database yet): stored hashed,
  written to ``<home>/credentials`` (0600) so the same user's CLI just works, and shown once.
- A join token for nodes, kept in ``<home>/join-token`` (0600) so that ``gpufleet up`` can give
  it to its own node and an operator can read it again; made anew if the file's token no
  longer verifies (deleted with ``gpufleet keys rm``).
- The controller key: an admin key for this server process's own flows (the control queue's
  in-process worker calls the API through gpufleet.client like anyone else). It is put in this
  process's environment (GPUFLEET_API_KEY), never in a flow run's parameters, and replaced on
  every start (``controller:<host>:<port>``), so a stale one is only ever in a dead process.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from gpufleet import credentials
from gpufleet.core.access import Role
from gpufleet.core.keys import JOIN_ROLE
from gpufleet.store import keys as key_store
from gpufleet.store.models import ApiKeyRow

JOIN_FILE = "join-token"
CONTROLLER_PREFIX = "controller:"


@dataclass(frozen=True)
class Bootstrap:
    controller_key: str
    join_token: str
    #: the first admin key, when this start created it (None: one existed already)
    admin_key: str | None


def bootstrap(state, home: Path, port: int) -> Bootstrap:  # noqa: ANN001 - ServerState
    with state.session() as s:
        admins = s.scalars(select(ApiKeyRow.name).where(ApiKeyRow.role == Role.ADMIN.value)).all()
        admin_key = None
        if not [n for n in admins if not n.startswith(CONTROLLER_PREFIX)]:
            admin_key = key_store.create_key(s, "admin", Role.ADMIN.value).token
        name = f"{CONTROLLER_PREFIX}{socket.gethostname()}:{port}"
        key_store.delete_where(s, role=Role.ADMIN.value, name=name)
        controller = key_store.create_key(s, name, Role.ADMIN.value).token
    if admin_key is not None:
        credentials.write_private_json(home / credentials.FILE_NAME, {"api_key": admin_key})
    return Bootstrap(controller, _join_token(state, home), admin_key)


def _join_token(state, home: Path) -> str:  # noqa: ANN001
    path = home / JOIN_FILE
    try:
        saved = (credentials.read_private_json(path) or {}).get("join_token")
    except credentials.CredentialsError:
        saved = None
    if saved:
        with state.session() as s:
            verified = key_store.verify(s, saved)
        if verified is not None and verified.principal is None:
            return saved
    with state.session() as s:
        token = key_store.create_key(s, "join-token", JOIN_ROLE).token
    credentials.write_private_json(path, {"join_token": token})
    return token


def remove_controller_key(state, port: int) -> None:  # noqa: ANN001
    with state.session() as s:
        key_store.delete_where(s, role=Role.ADMIN.value, name=f"{CONTROLLER_PREFIX}{socket.gethostname()}:{port}")


def announce(boot: Bootstrap, home: Path, url: str, say: Callable[[str], object], interactive: bool) -> None:
    """How to use the credentials. Tokens go to a terminal only, never into a log file."""
    creds = home / credentials.FILE_NAME
    if boot.admin_key is not None:
        if interactive:
            say(f"admin API key (shown once; also saved to {creds}, mode 0600):\n  {boot.admin_key}")
        else:
            say(f"admin API key created and saved to {creds} (mode 0600); it is not printed into logs")
    say(f"the CLI on this machine reads its key from {creds}; elsewhere: export {credentials.API_KEY_ENV}=<key>")
    join = home / JOIN_FILE
    if interactive:
        say(f"nodes join with: gpufleet node --server {url} --join-token {boot.join_token}")
    else:
        say(f"nodes join with: gpufleet node --server {url} --join-token \"$(jq -r .join_token {join})\"")


def export_controller_key(boot: Bootstrap) -> None:
    """This process's own flows (the control worker runs them in-process) use the controller key."""
    os.environ[credentials.API_KEY_ENV] = boot.controller_key
