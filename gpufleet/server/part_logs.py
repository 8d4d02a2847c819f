"""Which worker answers `gpufleet logs ID --part WORKER`: a part worker of a distributed
instance runs its llama.cpp rpc-server(s), whose logs live there, not on the main worker."""

from __future__ import annotations

from fastapi import HTTPException

from gpufleet.core.schemas import InstanceView


def part_worker(inst: InstanceView, part: str) -> str:
    """``part`` when it is one of the instance's part workers, else a 400 naming them."""
    parts = [p.worker for p in inst.placement.parts] if inst.placement else []
    if part in parts:
        return part
    if not parts:
        raise HTTPException(400, f"instance {inst.id} is not distributed: it has no part workers "
                                 "(its log is `gpufleet logs ID` without --part)")
    raise HTTPException(400, f"{part} is not a part worker of instance {inst.id}; its part workers: "
                             f"{', '.join(parts)}")
