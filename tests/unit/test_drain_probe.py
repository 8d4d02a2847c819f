"""What the drain reads from vLLM's /metrics: requests running plus waiting."""

from __future__ import annotations

import pytest

from gpufleet.node.drain import vllm_busy

VLLM = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="chat"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="chat"} 1.0
vllm:num_requests_swapped{engine="0",model_name="chat"} 7.0
"""


@pytest.mark.parametrize(("text", "busy"), [
    (VLLM, 3),
    (VLLM.replace(b"} 2.0", b"} 0.0").replace(b"} 1.0", b"} 0.0"), 0),
    (b"vllm:num_requests_running 1\n", 1),  # no labels (older versions)
    (b"llamacpp:requests_processing 1\n", None),  # not vLLM: cannot tell
    (b"", None),
])
def test_vllm_busy(text: bytes, busy: int | None) -> None:
    assert vllm_busy(text) == busy
