"""Estimate vs the pinned llama-server (b11434) on this machine's CPU, per architecture and
flag set (``tests/support/arch_cases.py``), per buffer and whole-process peak RSS.

    PYTHONPATH=. .venv/bin/python benchmarks/estimate_architectures.py [--save m.json] [--load m.json]

``--save`` also writes llama.cpp's figures to a file; ``--load`` reads them from one instead
of running llama.cpp (to compare another version of the estimator with the same measurements,
e.g. from a worktree of an older commit). Goal per buffer max(3 %, 64 MiB), RSS max(5 %, 128 MiB).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpufleet.core.estimation import EstimateOptions, estimate  # noqa: E402
from gpufleet.sources.local import read_local_metadata  # noqa: E402
from tests.support.arch_cases import ARCH_CASES  # noqa: E402
from tests.support.arch_models import write_arch_model  # noqa: E402

MiB = 1 << 20
TERMS = ("model", "kv", "compute", "output", "rss")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--save")
    parser.add_argument("--load")
    args = parser.parse_args()
    saved = json.loads(Path(args.load).read_text()) if args.load else {}
    measured: dict[str, dict[str, int]] = {}
    print(f"{'case':<24}" + "".join(f"{t:>22}" for t in TERMS) + "  goal")
    worst_ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for case in ARCH_CASES:
            path = write_arch_model(Path(tmp) / f"{case.name}.gguf", case.model)
            meta = read_local_metadata(str(path))[1]
            host = estimate(meta, EstimateOptions(backend_params=case.params)).host
            if case.name in saved:
                got = saved[case.name]
            else:
                from tests.support.llama_server_measure import measure

                m = measure(path, case.params, meta.context_length)
                got = {t: m.total(t) for t in TERMS[:4]} | {"rss": m.rss_peak}
            measured[case.name] = got
            est = {"model": host.weights, "kv": host.kv_cache, "compute": host.compute, "output": host.output,
                   "rss": host.total}
            cells, ok = [], True
            for t in TERMS:
                e, a = est[t], got[t]
                rel = (e - a) / a * 100 if a else 0.0
                floor, share = (128 * MiB, 0.05) if t == "rss" else (64 * MiB, 0.03)
                ok = ok and abs(e - a) <= max(share * a, floor)
                cells.append(f"{e / MiB:8.2f}/{a / MiB:8.2f} {rel:+5.1f}%")
            worst_ok = worst_ok and ok
            print(f"{case.name:<24}" + "".join(f"{c:>22}" for c in cells) + ("  yes" if ok else "  NO"))
    print("columns: estimate / llama.cpp MiB, error")
    if args.save:
        Path(args.save).write_text(json.dumps(measured, indent=1))
    return 0 if worst_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
