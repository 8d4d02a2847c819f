"""Estimate vs the real llama.cpp server on this machine's CPU, per buffer and RSS.

For every shape in ``tests/support/gguf_shapes.py`` it writes the GGUF model,
runs llama.cpp (xllamacpp) with the case's flags, and prints llama.cpp's logged
buffers (model, KV, compute, output) and the process RSS growth next to the
estimate, with the relative error and whether it is inside the goal:
max(3 %, 64 MiB) per buffer, max(5 %, 128 MiB) for RSS.

    .venv/bin/python benchmarks/estimate_accuracy.py [--strict]

``--strict`` also checks the tighter max(3 %, 1 MiB) per buffer (informational:
the compute buffer is a fitted model of ggml's allocator, see
``gpufleet/core/estimation/llama_compute.py``).
"""

from __future__ import annotations

import socket
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpufleet.core.estimation import EstimateOptions, estimate  # noqa: E402
from gpufleet.demo.tiny_model import write_tiny_llama_gguf  # noqa: E402
from gpufleet.sources.local import read_local_metadata  # noqa: E402
from tests.support.gguf_shapes import ACCURACY_SHAPES, AccuracyCase  # noqa: E402
from tests.support.llama_measure import Measured, measure  # noqa: E402

MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def within(estimated: int, actual: int, rel: float, floor: int) -> bool:
    return abs(estimated - actual) <= max(rel * actual, floor)


def compare(case: AccuracyCase, directory: Path) -> list[tuple[str, int, int]]:
    """(term, estimated bytes, llama.cpp bytes) for one case."""
    path = write_tiny_llama_gguf(directory / f"{case.name}.gguf", case.shape)
    meta = read_local_metadata(path)[1]
    est = estimate(meta, EstimateOptions(backend_params=case.params)).host
    got: Measured = measure(path, case.params, free_port())
    path.unlink()
    return [
        ("model", est.weights, got.total("model")),
        ("kv", est.kv_cache, got.total("kv")),
        ("compute", est.compute, got.total("compute")),
        ("output", est.output, got.total("output")),
        ("rss", est.total, got.rss_delta),
    ]


def main() -> int:
    strict = "--strict" in sys.argv
    failures = 0
    print(f"{'case':<16} {'term':<8} {'estimate MiB':>12} {'llama.cpp MiB':>13} {'error':>8}  goal")
    with tempfile.TemporaryDirectory() as tmp:
        for case in ACCURACY_SHAPES:
            for term, est, got in compare(case, Path(tmp)):
                rel, floor = (0.05, 128 * MiB) if term == "rss" else (0.03, (1 if strict else 64) * MiB)
                ok = within(est, got, rel, floor)
                failures += not ok
                err = (est - got) / got * 100 if got else 0.0
                print(f"{case.name:<16} {term:<8} {est / MiB:>12.2f} {got / MiB:>13.2f} {err:>+7.1f}%  "
                      f"{'ok' if ok else 'MISS'}")
    print(f"{failures} outside the goal")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
