"""`gpufleet schedule add|ls|rm`: scale or restart a deployment at cron times.

Each rule is a Prefect schedule on the `scale` (or `restart-deployment`) Prefect deployment
with the parameters filled in, made through the gpufleet server like every other command;
it shows, and can be edited, in the Prefect UI. A manual `gpufleet scale` between two rules
holds until the next rule fires.
"""

from __future__ import annotations

import json
from typing import Annotated, NoReturn, Optional

import typer
from rich.table import Table

from gpufleet.cli.output import console, err_console
from gpufleet.client import GpufleetClient
from gpufleet.core.schedules import DEFAULT_TIMEZONE, ScheduleView

schedule_app = typer.Typer(help="Scale or restart deployments at cron times (Prefect schedules).",
                           no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def _fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def schedules_table(rules: list[ScheduleView]) -> Table:
    t = Table("ID", "DEPLOYMENT", "ACTION", "WHEN", "NEXT", "ACTIVE", box=None)
    for r in rules:
        action = f"scale → {r.replicas}" if r.action == "scale" else "restart (one replica at a time)"
        nxt = r.next_run.isoformat(timespec="minutes") if r.next_run else "-"
        t.add_row(r.id, r.deployment, action, r.schedule, nxt, "yes" if r.active else "paused")
    return t


@schedule_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="deployment name")],
    cron: Annotated[str, typer.Option("--cron", help='cron expression, e.g. "0 8 * * 1-5"')],
    replicas: Annotated[Optional[int], typer.Option("--replicas", help="scale to this many replicas")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="restart the replicas one at a time instead")] = False,
    timezone: Annotated[Optional[str], typer.Option(
        "--timezone", help=f"IANA time zone of the cron, e.g. Europe/Paris (default {DEFAULT_TIMEZONE})")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a rule: at CRON, scale NAME to --replicas, or --restart it replica by replica."""
    if restart == (replicas is not None):
        _fail("give either --replicas N (a scaling rule) or --restart (a restart rule)", 2)
    body: dict[str, object] = {"cron": cron, "restart": restart}
    if replicas is not None:
        body["replicas"] = replicas
    if timezone is not None:
        body["timezone"] = timezone
    with GpufleetClient() as c:
        rule = ScheduleView.model_validate(c._request("POST", f"/v1/deployments/{name}/schedules", json=body))
    if as_json:
        print(rule.model_dump_json())
        return
    tz_note = "" if timezone else f" (default time zone {DEFAULT_TIMEZONE}; --timezone to choose)"
    console.print(f"schedule {rule.id}: {rule.schedule}{tz_note}", highlight=False, soft_wrap=True)
    console.print(schedules_table([rule]))


@schedule_app.command("ls")
def ls(name: Annotated[Optional[str], typer.Argument(help="only this deployment's rules")] = None,
       as_json: JsonOpt = False) -> None:
    """List the rules (made by gpufleet or in the Prefect UI alike)."""
    with GpufleetClient() as c:
        path = f"/v1/deployments/{name}/schedules" if name else "/v1/schedules"
        rules = [ScheduleView.model_validate(r) for r in c._request("GET", path)]
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rules]))
        return
    console.print(schedules_table(rules))


@schedule_app.command("rm")
def rm(schedule_id: Annotated[str, typer.Argument(help="the rule's ID (from `schedule ls`)")]) -> None:
    """Remove a rule."""
    with GpufleetClient() as c:
        rule = ScheduleView.model_validate(c._request("DELETE", f"/v1/schedules/{schedule_id}"))
    console.print(f"removed schedule {rule.id} of {rule.deployment}: {rule.schedule}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(schedule_app, name="schedule")
