"""Retry policy for tasks that talk over the network.

Exponential backoff (0.5 s, 1 s, 2 s, …) on transient failures only: a
refused request (4xx) is an answer, and retrying it would only delay the error.
"""

from __future__ import annotations

from typing import Any

import httpx
from prefect.tasks import exponential_backoff

from gpufleet.client import ApiError, ServerUnavailable

NETWORK_RETRIES = 4
NETWORK_BACKOFF = exponential_backoff(backoff_factor=0.5)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiError):
        return exc.status >= 500
    if isinstance(exc, httpx.HTTPStatusError):  # e.g. Prefect's API answering 503 under load
        return exc.response.status_code >= 500
    return isinstance(exc, ServerUnavailable | httpx.TransportError | TimeoutError)


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the state's own exception
        return is_transient(exc)
    return False


NETWORK_TASK: dict[str, Any] = dict(
    retries=NETWORK_RETRIES,
    retry_delay_seconds=NETWORK_BACKOFF,
    retry_jitter_factor=0.2,
    retry_condition_fn=retry_if_transient,
)
