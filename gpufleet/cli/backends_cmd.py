"""`gpufleet backends ls` and `gpufleet backends install`: engine versions per node.

`install` starts an `install-backend` flow run on the node's queue through the
gpufleet server and follows it there (state and log lines, which the server reads
from Prefect, so the CLI needs to reach the gpufleet server only), then lists what
the node runs now. Installing is idempotent: a version already there returns at once.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, NoReturn, Optional

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from gpufleet.cli.output import console, err_console
from gpufleet.cli.wait import positive_timeout
from gpufleet.client import GpufleetClient
from gpufleet.core.backends.registry import UnknownEngine, engine
from gpufleet.core.schemas import BackendInstallRequest, RunProgress, WorkerView

DEVICES = ("cpu", "cuda", "rocm")
POLL_S = 0.5
LOG_FLUSH_S = 2.5

backends_app = typer.Typer(help="Engine versions on the nodes: list and install.", no_args_is_help=True)

NodeOpt = Annotated[Optional[str], typer.Option("--node", help="worker name (default: the only worker)")]


def _fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _workers(c: GpufleetClient, node: str | None) -> list[WorkerView]:
    workers = c.list_workers()
    if node is None:
        return workers
    chosen = [w for w in workers if w.name == node]
    if not chosen:
        _fail(f"worker {node!r} is not registered; registered: {', '.join(w.name for w in workers) or 'none'}")
    return chosen


def backends_table(workers: list[WorkerView]) -> Table:
    t = Table("NODE", "ENGINE", "VERSION", "DEVICES", "LOCATION", "DEFAULT", box=None)
    for w in workers:
        if not w.engines:
            t.add_row(w.name, "-", "-", "-", "(reports no engines)", "")
        for e in w.engines:
            t.add_row(w.name, e.engine, e.version, ", ".join(e.devices) or "-", e.location or "-",
                      "*" if e.default else "")
    return t


def list_backends(node: NodeOpt = None,
                  as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Per node: each engine version it can run, the devices it can use, where it lives, and
    the default (what runs when a deployment gives no --backend-version)."""
    with GpufleetClient() as c:
        workers = _workers(c, node)
    if as_json:
        print(json.dumps([{"node": w.name, **e.model_dump(mode="json")} for w in workers for e in w.engines],
                         indent=2))
        return
    console.print(backends_table(workers))


def _resolve_node(c: GpufleetClient, node: str | None) -> str:
    if node is not None:
        return node
    names = [w.name for w in c.list_workers()]
    if len(names) == 1:
        return names[0]
    if not names:
        _fail("no workers are registered; start one with `gpufleet node` (or `gpufleet up`)")
    _fail(f"{len(names)} workers are registered; choose one with --node ({', '.join(names)})", 2)


def follow_run(c: GpufleetClient, run_id: str, what: str, timeout: float) -> RunProgress:
    """Print the run's log lines as they arrive under a live progress line, until it is final."""
    deadline = time.monotonic() + timeout
    offset = 0
    final_since: float | None = None
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(what, total=None)
        while True:
            run = c.run_progress(run_id, offset)
            for line in run.logs:
                bar.console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
            offset = run.next_offset
            last = run.logs[-1].splitlines()[0][:80] if run.logs else None
            bar.update(task, description=f"{what} [{run.state}]" + (f" {last}" if last else ""))
            if run.final:
                # Prefect ships log lines in batches (every ~2 s): wait for the last ones.
                final_since = final_since or time.monotonic()
                if not run.logs and time.monotonic() - final_since > LOG_FLUSH_S:
                    return run
            if time.monotonic() > deadline:
                _fail(f"{what}: still {run.state} after {timeout:.0f} s; it goes on on the node "
                      f"(flow run {run_id}); `gpufleet backends ls` shows it once installed")
            if not run.logs:
                time.sleep(POLL_S)


def install_backend(
    engine_name: Annotated[str, typer.Argument(metavar="ENGINE", help="llama.cpp, vllm or vox-box")],
    version: Annotated[str, typer.Argument(metavar="VERSION", help="e.g. 0.32.0, or b11434 for llama.cpp")],
    node: NodeOpt = None,
    device: Annotated[Optional[str], typer.Option(
        "--device", help="cpu, cuda or rocm (default: cuda if the node has real NVIDIA GPUs, else cpu)")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="follow the install until it ends")] = True,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds to follow it",
                                                              callback=positive_timeout)] = 3600.0,
) -> None:
    """Install an engine version on a node, in its own environment (a flow run on that node)."""
    try:
        engine(engine_name)
    except UnknownEngine as exc:
        _fail(str(exc), 2)
    if device is not None and device not in DEVICES:
        _fail(f"--device must be one of {', '.join(DEVICES)}, got {device!r}", 2)
    with GpufleetClient() as c:
        name = _resolve_node(c, node)
        req = BackendInstallRequest(engine=engine_name, version=version, device=device)  # type: ignore[arg-type]
        op = c.install_backend(name, req)
        console.print(op.detail or f"installing {engine_name} {version} on {name}", highlight=False)
        if op.flow_run_url:
            console.print(f"flow run: {op.flow_run_url}", highlight=False)
        if not wait or not op.flow_run_id:
            return
        run = follow_run(c, op.flow_run_id, f"{engine_name} {version} on {name}", timeout)
        if not run.completed:
            _fail(f"installing {engine_name} {version} on {name} ended {run.state}: {run.message}")
        console.print(f"{engine_name} {version} installed on {name}", highlight=False)
        console.print(backends_table(_workers(c, name)))


backends_app.command("ls")(list_backends)
backends_app.command("install")(install_backend)


def register(app: typer.Typer) -> None:
    """Add `backends ls` and `backends install` to the gpufleet command."""
    app.add_typer(backends_app, name="backends")
