"""The llama.cpp estimate against the real thing: llama.cpp's own buffer sizes
and the process's peak RSS, for the table of model shapes in
``tests/support/gguf_shapes.py`` (dense, GQA, F32/F16/Q8_0/Q4_0, tied output,
flash attention off, long context, quantized KV cache; 90-200 MB each).

Goals from the estimation issue: every buffer within max(3 %, 64 MiB) of what
llama.cpp logs, RSS within max(5 %, 128 MiB) of the measured growth. Those
floors are loose for models this small, so each term also has the tighter
bound it actually achieves here, which a regression in the formulas would
break: KV exact (to the log's 0.01 MiB), compute within max(3 %, 1 MiB),
model weights within max(5 %, 1 MiB) (llama.cpp logs the mmapped *span* of the
file, which with repacked Q4_0 includes some tensors that live in the repack
buffer instead). CPU only: per-GPU figures are checked structurally in the unit
tests, since this machine has no GPU.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gpufleet.core.estimation import EstimateOptions, estimate
from gpufleet.demo.tiny_model import write_tiny_llama_gguf
from gpufleet.sources.local import read_local_metadata
from tests.support.gguf_shapes import ACCURACY_SHAPES, AccuracyCase
from tests.support.llama_measure import measure

import xllamacpp  # noqa: F401,E402 - a dependency: its absence must fail, not skip

MiB = 1 << 20
LOG_ROUNDING = MiB // 100  # llama.cpp prints MiB with two decimals


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_within(term: str, est: int, got: int, rel: float, floor: int) -> None:
    tolerance = max(rel * got, floor)
    assert abs(est - got) <= tolerance, (
        f"{term}: estimate {est / MiB:.2f} MiB, llama.cpp {got / MiB:.2f} MiB, "
        f"off by {(est - got) / MiB:+.2f} MiB (allowed {tolerance / MiB:.2f})"
    )


@pytest.mark.parametrize("case", ACCURACY_SHAPES, ids=lambda c: c.name)
def test_estimate_matches_llama_cpp(case: AccuracyCase, tmp_path: Path) -> None:
    path = write_tiny_llama_gguf(tmp_path / f"{case.name}.gguf", case.shape)
    meta = read_local_metadata(path)[1]
    host = estimate(meta, EstimateOptions(backend_params=case.params)).host
    got = measure(path, case.params, free_port())

    pairs = {"model": (host.weights, got.total("model")), "kv": (host.kv_cache, got.total("kv")),
             "compute": (host.compute, got.total("compute")), "output": (host.output, got.total("output"))}
    for term, (est, actual) in pairs.items():
        assert_within(term, est, actual, 0.03, 64 * MiB)  # the goal
    assert_within("rss", host.total, got.rss_delta, 0.05, 128 * MiB)

    assert_within("kv", host.kv_cache, got.total("kv"), 0.0, LOG_ROUNDING)
    assert_within("compute", host.compute, got.total("compute"), 0.03, MiB)
    assert_within("model", host.weights, got.total("model"), 0.05, MiB)
    assert_within("output", host.output, got.total("output"), 0.0, LOG_ROUNDING)
