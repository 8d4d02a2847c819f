"""Rolling replacement (`gpufleet edit NAME … --rollout [--max-unavailable N]`): the arithmetic.

An edit changes the deployment's configuration; each instance keeps the copy it was created
with, so without ``--rollout`` running instances keep theirs. With it, the plan
(:mod:`gpufleet.core.plan`) replaces the *outdated* ones — instances whose launch
configuration differs from the deployment's — surge first, like a Kubernetes Deployment with
``maxSurge = N, maxUnavailable = 0``: up to N new instances start beside the old ones, and an
old one is marked for removal only when a new one is RUNNING. So the number of RUNNING
instances never drops below what it was because of the rollout; a new instance that fails
stops the rollout (the plan says which and why) and the old ones keep serving.

This module is pure: counts in, counts out. Which instances those counts pick (worst first)
and when a rollout is done or stopped is the plan's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Deployment fields that are policies read from the deployment, not part of what an instance
#: is launched with: changing them outdates no instance (and applies to running ones at once).
POLICY_FIELDS = frozenset({"restart_on_error", "lost_worker_grace_s"})


def launch_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a stored configuration that an instance is launched with."""
    return {k: v for k, v in config.items() if k not in POLICY_FIELDS}


def outdated(instance_config: Mapping[str, Any], deployment_config: Mapping[str, Any]) -> bool:
    """An instance launched with another configuration than the deployment's current one.
    Fields missing from older stored copies count as their defaults: compare only keys both
    hold, plus keys whose presence differs with a non-empty value."""
    mine, theirs = launch_config(instance_config), launch_config(deployment_config)
    for key in mine.keys() | theirs.keys():
        a, b = mine.get(key), theirs.get(key)
        if a != b and not (_empty(a) and _empty(b)):
            return True
    return False


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {}


@dataclass(frozen=True)
class RolloutStep:
    """What one plan round does: ``create`` new instances, mark ``remove_old`` outdated and
    ``remove_new`` surplus new ones for removal (worst first)."""

    create: int = 0
    remove_old: int = 0
    remove_new: int = 0


def rollout_step(replicas: int, max_unavailable: int, old: int, new: int, new_running: int) -> RolloutStep:
    """One round of a rollout over the live instances (those not already marked for removal).

    ``old``: outdated instances; ``new``: instances of the current configuration, of which
    ``new_running`` are RUNNING. Rules, in order:

    1. new instances beyond ``replicas`` go (a scale-down during a rollout), not-running first;
    2. an old instance goes only when a RUNNING new one stands in for it:
       ``remove_old = min(old, old + new_running − replicas)``, at least 0;
    3. new ones are created up to ``replicas``, with at most ``max_unavailable`` live
       instances above ``replicas`` (the surge): ``create = min(replicas − new,
       replicas + max_unavailable − live after removals)``, at least 0.
    """
    if replicas < 0 or old < 0 or new < 0 or not 0 <= new_running <= new:
        raise ValueError(f"invalid rollout counts: replicas={replicas} old={old} new={new} running={new_running}")
    if max_unavailable < 1:
        raise ValueError(f"max_unavailable must be >= 1, got {max_unavailable}")
    remove_new = max(0, new - replicas)
    new_kept = new - remove_new
    running_kept = min(new_running, new_kept)  # the not-running ones go first
    remove_old = max(0, min(old, old + running_kept - replicas))
    live_after = old - remove_old + new_kept
    create = max(0, min(replicas - new_kept, replicas + max_unavailable - live_after))
    return RolloutStep(create=create, remove_old=remove_old, remove_new=remove_new)
