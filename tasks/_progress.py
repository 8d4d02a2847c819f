"""A Prefect progress artifact per weights pull (``pull-weights``), so the run's page in the
Prefect UI shows how far a download is, as ``gpufleet ps`` does with ``DOWNLOADING n %``.

Made on the first progress report (a local path reports none: nothing is pulled) and
updated with each later one (at most once a second); best effort, never the pull's failure.
"""

from __future__ import annotations

import logging
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from gpufleet.node.weights import PullProgress

log = logging.getLogger(__name__)


class PullArtifact:
    def __init__(self, instance_name: str, node: str) -> None:
        self.what = f"weights of {instance_name} on {node}"
        self.key = f"pull-{instance_name}".lower()
        self.artifact: UUID | None = None
        self.failed = False

    def update(self, p: PullProgress) -> None:
        if self.failed:
            return
        try:
            description = f"pulling {self.what}: {p.describe()}"
            if self.artifact is None:
                self.artifact = create_progress_artifact(progress=p.percent, key=self.key, description=description)
            else:
                update_progress_artifact(self.artifact, progress=p.percent, description=description)
        except Exception as exc:  # noqa: BLE001 - a report only
            self.failed = True
            log.warning("progress artifact for %s: %s", self.what, exc)

    def finish(self) -> None:
        if self.artifact is not None and not self.failed:
            try:
                update_progress_artifact(self.artifact, progress=100, description=f"pulled {self.what}")
            except Exception as exc:  # noqa: BLE001
                log.warning("progress artifact for %s: %s", self.what, exc)
