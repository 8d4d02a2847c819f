"""Runs the in-process Prefect worker for the control queue on a background thread."""

from __future__ import annotations

import asyncio
import logging
import threading

from gpufleet.prefect_layer import prefect_layer

log = logging.getLogger(__name__)


class ControlWorker:
    def __init__(self, pool: str, queue: str, name: str) -> None:
        self.pool, self.queue, self.name = pool, queue, name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._main, name="gpufleet-control-worker", daemon=True)
        self._started = threading.Event()
        self._prefect_worker: object | None = None

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._started.set()
        try:
            prefect_worker = prefect_layer().worker_class(
                work_pool_name=self.pool, work_queues=[self.queue], name=self.name, limit=None
            )
            self._prefect_worker = prefect_worker
            await prefect_worker.start(printer=log.info)
        except asyncio.CancelledError:
            pass

    def poke(self) -> None:
        """A control flow run was just created: pick it up now rather than at the next poll."""
        prefect_worker = self._prefect_worker
        if prefect_worker is not None:
            prefect_worker.poke()  # type: ignore[attr-defined]

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop and self._task:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout)
