"""What a deploy or scale run leaves in Prefect's UI: the placement as a table artifact and
the memory estimate as a markdown artifact, keyed per deployment (``placement-<name>``,
``estimate-<name>``) so the Artifacts page keeps each deployment's history.

They are reports, not operations: an artifact Prefect refuses is logged and the run goes on.
"""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows._converge import ConvergeReport
from gpufleet.core.estimation.summary import ResourceEstimate
from gpufleet.core.schemas import InstanceView
from tasks.server import read_deployment, read_deployment_instances

MiB = 1 << 20


def placement_rows(instances: list[InstanceView], report: ConvergeReport) -> list[dict[str, object]]:
    rows = []
    for inst in sorted(instances, key=lambda i: i.id):
        p = inst.placement
        vram = (sum(p.vram_claim.values()) + sum(sum(x.vram_claim.values()) for x in p.parts)) if p else 0
        rows.append({
            "instance": inst.name, "id": inst.id, "state": inst.state.value,
            "worker": " + ".join(p.workers()) if p else "-",
            "GPUs": ", ".join(f"{w}:{i}" for w, i in p.devices()) if p and p.devices() else ("CPU" if p else "-"),
            "VRAM MiB": round(vram / MiB), "RAM MiB": round(p.ram_claim / MiB) if p else 0,
            "score": round(p.score, 3) if p else None,
            "note": report.unplaced.get(inst.id) or (p.note if p else "") or inst.state_message,
        })
    return rows


def estimate_markdown(name: str, est: ResourceEstimate | None) -> str:
    if est is None or not est.known:
        return f"# Estimate of {name}\n\nUnknown: {est.reason if est else 'no estimate stored'}\n"
    lines = [f"# Estimate of {name}", "", f"Backend {est.backend}, context {est.context_size}, "
             f"{est.total_layers} layers.", "", "| per instance | MiB |", "|---|---:|"]
    for label, value in [("weights", est.weights), ("KV cache", est.kv_cache), ("compute", est.compute),
                         ("output", est.output), ("overhead", est.overhead), ("VRAM on one GPU", est.gpu_vram),
                         ("host RAM with a GPU", est.gpu_ram), ("host RAM on CPU only", est.cpu_ram)]:
        lines.append(f"| {label} | {value / MiB:.1f} |")
    for title, devices in [("One-GPU configuration", est.devices), ("CPU-only configuration", est.cpu_devices)]:
        if devices:
            lines += ["", f"## {title}", "", "| device | layers | weights | KV cache | compute | output | overhead | total |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
            lines += [f"| {d.device} | {d.layers} | " + " | ".join(f"{v / MiB:.1f}" for v in (
                d.weights, d.kv_cache, d.compute, d.output, d.overhead, d.total)) + " |" for d in devices]
    if est.notes:
        lines += ["", *(f"- {n}" for n in est.notes)]
    return "\n".join(lines) + "\n"


def publish(name: str, report: ConvergeReport) -> None:
    """The placement table and the estimate of ``name`` after converging."""
    try:
        key = name.lower()
        create_table_artifact(table=placement_rows(read_deployment_instances(name), report), key=f"placement-{key}",
                              description=f"Placement of {name}: instance, worker, GPUs, claimed VRAM/RAM, score")
        create_markdown_artifact(markdown=estimate_markdown(name, read_deployment(name).estimate),
                                 key=f"estimate-{key}", description=f"Memory estimate of one instance of {name}")
    except Exception as exc:  # noqa: BLE001 - a report, never the operation's failure
        get_run_logger().warning("could not publish the artifacts of %s: %s", name, exc)
