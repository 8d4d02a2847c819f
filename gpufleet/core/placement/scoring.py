"""Scorers: among the candidates of one stage, which is best? Each scorer returns
points with a name, kept as a breakdown so a placement can be explained.

- resources (0–100): worker utilisation after placing, u = (claimed + claim) / total,
  over the GPUs of the worker(s) involved, or over RAM for a CPU candidate.
  spread scores 100 × (1 − u) (the emptiest worker wins), binpack 100 × u (the
  fullest worker that still fits wins, keeping whole GPUs free for large models).
- replicas (spread only): −25 per replica of the same deployment already on the
  worker, so replicas go to different workers even when the model is tiny, unless
  the other workers are more than 25 points (a quarter of their memory) fuller.
- locality: +1 when the worker already holds an instance of the same model
  (its files are likely cached there); small on purpose, a tie-breaker.
- offload: −50 × (layers on CPU / all layers), preferring the candidate that keeps
  most of the model on GPUs.

Ties are broken by worker name, then GPU indexes (see the engine), so the same
cluster and request always give the same placement.
"""

from __future__ import annotations

from gpufleet.core.placement.fit import Candidate
from gpufleet.core.placement.request import PlacementRequest

REPLICA_PENALTY = 25.0
LOCALITY_BONUS = 1.0
OFFLOAD_WEIGHT = 50.0


def utilisation(c: Candidate) -> float:
    if c.gpus:
        names = {g.worker for g in c.gpus}
        if len(names) == 1:
            total, claimed = c.worker.gpu_total, c.worker.gpu_claimed
        else:  # distributed: the GPUs involved
            total = sum(g.total for g in c.gpus)
            claimed = sum(g.total - g.free for g in c.gpus)
        return (claimed + sum(c.claims)) / total if total else 1.0
    w = c.worker
    return (w.ram_total - w.ram_free + c.ram) / w.ram_total if w.ram_total else 1.0


def score(c: Candidate, request: PlacementRequest) -> tuple[float, dict[str, float]]:
    u = utilisation(c)
    strategy = request.spec.strategy
    parts = {"resources": round(100.0 * (u if strategy == "binpack" else 1.0 - u), 3)}
    if strategy == "spread":
        parts["replicas"] = 0.0 - REPLICA_PENALTY * c.worker.replicas.get(request.deployment, 0) + 0.0
    parts["locality"] = LOCALITY_BONUS if request.source and request.source in c.worker.sources else 0.0
    est = c.estimate
    if est is not None and c.stage == "offload" and est.total_layers:
        parts["offload"] = round(-OFFLOAD_WEIGHT * (est.total_layers - est.gpu_layers) / est.total_layers, 3)
    return round(sum(parts.values()), 3), parts
