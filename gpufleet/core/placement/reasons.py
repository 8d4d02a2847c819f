"""Why an instance could not be placed, for every worker, in words a user can act on."""

from __future__ import annotations

from dataclasses import dataclass

GiB = float(1 << 30)
#: Workers named per reason before the rest are counted ("and 247 more").
NAMES_PER_REASON = 3


def gib(n: int) -> str:
    """Bytes as GiB: one decimal from 1 GiB ('41.2 GiB'), two below ('0.25 GiB')."""
    n = max(n, 0)
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / GiB:.2f} GiB"


@dataclass(frozen=True)
class Unplaceable:
    """No worker fits; ``reasons`` maps each worker to why it was rejected."""

    reasons: dict[str, str]

    def message(self) -> str:
        """Workers with the same reason are grouped: ``a, b: not ready; c: ...``."""
        if not self.reasons:
            return "no workers registered; start one with `gpufleet node`"
        groups: dict[str, list[str]] = {}
        for worker in sorted(self.reasons):
            groups.setdefault(self.reasons[worker], []).append(worker)
        parts = []
        for reason, workers in sorted(groups.items(), key=lambda kv: kv[1][0]):
            names = ", ".join(workers[:NAMES_PER_REASON])
            if len(workers) > NAMES_PER_REASON:
                names += f" and {len(workers) - NAMES_PER_REASON} more"
            parts.append(f"{names}: {reason}")
        return "; ".join(parts)
