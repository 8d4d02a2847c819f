"""`gpufleet keys create|ls|rm|join-token`: API keys (admin only, docs/auth.md).

`create` prints the token once — the server keeps only its hash — and says how to use it;
`ls` never shows a token, only its public prefix.
"""

from __future__ import annotations

import json
from typing import Annotated, NoReturn, Optional

import typer
from pydantic import ValidationError
from rich.table import Table

from gpufleet.cli.output import console, err_console
from gpufleet.client import GpufleetClient
from gpufleet.core.keys import KeyCreate

keys_app = typer.Typer(help="API keys: create (shown once), list, remove. Admin only.", no_args_is_help=True)


def _fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _client() -> GpufleetClient:
    return GpufleetClient(retries=3, retry_timeouts=False)


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="who or what uses the key")],
    role: Annotated[str, typer.Option(help="admin, operator (deploy/scale/edit/delete) or inference "
                                           "(the OpenAI-compatible routes only)")] = "inference",
    models: Annotated[Optional[str], typer.Option(help="deployments it may use, comma-separated (default: all)")] = None,
    expires: Annotated[Optional[str], typer.Option(help="lifetime, e.g. 30d, 12h, 2w (default: never)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the created key as JSON (token included)")] = False,
) -> None:
    """Create a key; its token is printed once."""
    scope = [m.strip() for m in (models or "").split(",") if m.strip()]
    try:
        body = KeyCreate(name=name, role=role, models=scope, expires_in=expires)  # type: ignore[arg-type]
    except ValidationError as exc:
        _fail("; ".join(f"--{'.'.join(map(str, e['loc'])).replace('expires_in', 'expires')}: "
                        f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors()), 2)
    with _client() as c:
        key = c.create_key(body)
    if as_json:
        print(key.model_dump_json())
        return
    console.print(f"created key {key.name} ({key.role}, {', '.join(key.models) or 'all deployments'}, "
                  f"expires {key.expires_at.isoformat(timespec='minutes') if key.expires_at else 'never'})",
                  highlight=False)
    console.print("token (shown once; the server keeps only its hash):", highlight=False)
    print(key.token)
    console.print(f"use it: export GPUFLEET_API_KEY={key.token[:11]}…   or   "
                  "curl -H 'Authorization: Bearer <token>' …", highlight=False)


@keys_app.command("ls")
def ls(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Keys: id, prefix, name, role, scope, expiry, last use (never a token)."""
    with _client() as c:
        keys = c.list_keys()
    if as_json:
        print(json.dumps([k.model_dump(mode="json") for k in keys]))
        return
    table = Table("ID", "PREFIX", "NAME", "ROLE", "MODELS", "EXPIRES", "LAST USED")
    for k in keys:
        expires = "expired" if k.expired else (k.expires_at.isoformat(timespec="minutes") if k.expires_at else "never")
        used = k.last_used_at.isoformat(timespec="minutes") if k.last_used_at else "-"
        table.add_row(str(k.id), f"gf_{k.prefix}", k.name, k.role, ",".join(k.models) or "*", expires, used)
    console.print(table)


@keys_app.command("rm")
def rm(key: Annotated[str, typer.Argument(help="id, prefix (with or without gf_) or name of the key")]) -> None:
    """Remove (revoke) a key: refused from the next request on."""
    with _client() as c:
        gone = c.delete_key(key.removeprefix("gf_"))
    console.print(f"removed key {gone.name} (gf_{gone.prefix}, {gone.role})", highlight=False)


@keys_app.command("join-token")
def join_token() -> None:
    """A new join token for nodes (`gpufleet node --join-token …`); remove old ones with `keys rm`."""
    with _client() as c:
        key = c.create_join_token()
    print(key.token)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
