"""Inspecting a 70B-class GGUF without downloading it: locally and through the hub stand-in.

    .venv/bin/python benchmarks/source_inspect.py [--rounds 20]

The model is synthetic but shaped like Llama-3-70B in Q4_K_M (80 blocks x 9
tensors + 3 = 723 tensors, a 128256-token vocabulary with 280147 merges, ≈ 42 GiB
of tensor data): its header is real bytes; the data is a sparse hole on disk
and lazily produced zeros on the hub, so nothing large is stored anywhere.

Prints, for the local path: header parse time and parse + metadata time (goal
< 50 ms); for Hugging Face and ModelScope through the stand-in: wall time,
range requests and bytes transferred for the header (goal ≤ 3 requests and
≤ header + 4 MiB), plus all requests the client made.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpufleet.core.gguf import parse_gguf_header  # noqa: E402
from gpufleet.core.schemas import ModelSource  # noqa: E402
from tests.support import synthetic_models as sm  # noqa: E402
from tests.support.fake_hub import FakeHub, VirtualFile  # noqa: E402

MiB = 1 << 20


def timed(fn, rounds: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3, min(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args(argv)

    head, size = sm.llama_gguf(sm.LLAMA_70B_Q4_K_M)
    n_tensors = len(sm.llama_tensors(sm.LLAMA_70B_Q4_K_M))
    print(f"synthetic model: {n_tensors} tensors, header {len(head) / MiB:.2f} MiB, file {size / (1 << 30):.1f} GiB")

    hub = FakeHub().start()
    os.environ["HF_ENDPOINT"] = os.environ["MODELSCOPE_ENDPOINT"] = hub.url
    os.environ.pop("PREFECT_API_URL", None)
    from gpufleet.sources import read_metadata  # after the endpoint is set, though it is passed explicitly anyway
    from gpufleet.sources.resolve import clear_cache

    def cold(src: ModelSource) -> None:
        clear_cache()
        read_metadata(src)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "llama-70b-Q4_K_M.gguf"
        with path.open("wb") as f:  # sparse: the header, then a hole
            f.write(head)
            f.truncate(size)
        parse_med, parse_min = timed(lambda: parse_gguf_header(head, file_size=size), args.rounds)
        source = ModelSource(kind="local_path", local_path=str(path))
        meta = read_metadata(source)
        full_med, full_min = timed(lambda: cold(source), args.rounds)
        hot_med, hot_min = timed(lambda: read_metadata(source), args.rounds)
        print(f"\nlocal ({meta.n_params / 1e9:.1f} B parameters, {meta.n_layers} layers, {meta.quantization}):")
        print(f"  header parse only          median {parse_med:6.1f} ms   min {parse_min:6.1f} ms")
        print(f"  read_metadata, cold        median {full_med:6.1f} ms   min {full_min:6.1f} ms   goal < 50 ms")
        print(f"  read_metadata, same file   median {hot_med:6.1f} ms   min {hot_min:6.1f} ms   (cached by path, size, mtime)")

    hub.add_repo("bench/llama-70b-GGUF", {"llama-70b-Q4_K_M.gguf": VirtualFile(head, size)})
    ok = True
    for kind in ("huggingface", "modelscope"):
        remote = ModelSource(kind=kind, repo="bench/llama-70b-GGUF")
        read_metadata(remote)  # warm: imports, connection pool
        clear_cache()
        hub.clear_log()
        t = time.perf_counter()
        read_metadata(remote)
        wall = (time.perf_counter() - t) * 1e3
        ranged = [r for r in hub.requests("GET") if r.range]
        sent = sum(r.body_bytes for r in ranged)
        fits = len(ranged) <= 3 and sent <= len(head) + 4 * MiB
        ok &= fits
        print(f"\n{kind} via the stand-in: {wall:.0f} ms, {len(ranged)} range requests, "
              f"{sent / MiB:.2f} MiB for a {len(head) / MiB:.2f} MiB header "
              f"(goal ≤ 3 and ≤ {(len(head) + 4 * MiB) / MiB:.2f} MiB: {'met' if fits else 'MISSED'})")
        for r in hub.requests():
            print(f"    {r.method:4} {r.status} {r.body_bytes:>9} B  {r.range or '':24} {r.path[:90]}")
    hub.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
