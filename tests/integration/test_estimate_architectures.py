"""The llama.cpp estimate against the pinned llama-server (b11434) on this machine's CPU,
across architectures and flag sets (``tests/support/arch_cases.py``): sliding-window models
(gemma2 with and without the key, gemma3's pattern, phi3 and qwen2 whose keys llama.cpp
ignores, --swa-full), mixture of experts, quantized mixes with CPU repack per tensor, a tied
Q4_0 output, --ctx-size 0 with --parallel (with and without --kv-unified), a 128k
vocabulary, flash attention off, and the context padding before the stream split.

Goal (issue 12): every buffer within max(3 %, 64 MiB) of llama.cpp's log, the process's
peak RSS within max(5 %, 128 MiB). Those floors are loose for models this small, so each
term also has the bound it achieves here, which a wrong rule would break: KV and output
exact (to the log's 0.01 MiB), compute within max(3 %, 1.5 MiB), model within max(4 %,
1 MiB) (llama.cpp logs the mapped *span*, which excludes repacked tensors at the end of the
file), RSS never more than 5 % below the measurement. The RSS compared is the whole
process's VmHWM after a prompt longer than a micro-batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.core.estimation import EstimateOptions, estimate
from gpufleet.sources.local import read_local_metadata
from tests.support.arch_cases import ARCH_CASES, ArchCase
from tests.support.arch_models import write_arch_model
from tests.support.llama_server_measure import measure

MiB = 1 << 20
LOG_ROUNDING = MiB // 100


def assert_within(term: str, est: int, got: int, rel: float, floor: int) -> None:
    tolerance = max(rel * got, floor)
    assert abs(est - got) <= tolerance, (
        f"{term}: estimate {est / MiB:.2f} MiB, llama.cpp {got / MiB:.2f} MiB, "
        f"off by {(est - got) / MiB:+.2f} MiB (allowed {tolerance / MiB:.2f})")


@pytest.mark.parametrize("case", ARCH_CASES, ids=lambda c: c.name)
def test_estimate_matches_llama_server(case: ArchCase, tmp_path: Path) -> None:
    path = write_arch_model(tmp_path / f"{case.name}.gguf", case.model)
    meta = read_local_metadata(str(path))[1]
    host = estimate(meta, EstimateOptions(backend_params=case.params)).host
    got = measure(path, case.params, meta.context_length)

    pairs = {"model": (host.weights, got.total("model")), "kv": (host.kv_cache, got.total("kv")),
             "compute": (host.compute, got.total("compute")), "output": (host.output, got.total("output"))}
    for term, (est, actual) in pairs.items():
        assert actual > 0 or term == "kv", f"llama.cpp logged no {term} buffer:\n{got.log[-2000:]}"
        assert_within(term, est, actual, 0.03, 64 * MiB)  # the goal
    assert_within("rss", host.total, got.rss_peak, 0.05, 128 * MiB)

    assert_within("kv", host.kv_cache, got.total("kv"), 0.0, LOG_ROUNDING)
    assert_within("output", host.output, got.total("output"), 0.0, LOG_ROUNDING)
    assert_within("compute", host.compute, got.total("compute"), 0.03, 3 * MiB // 2)
    assert_within("model", host.weights, got.total("model"), 0.04, MiB)
    assert host.total >= 0.95 * got.rss_peak, (host.total / MiB, got.rss_peak / MiB)
