"""Cold parse time of a 70B-class GGUF header, before (a git revision) and after this tree.

    .venv/bin/python benchmarks/gguf_parse.py [--rounds 15] [--processes 7] [--baseline REV]

The header is the synthetic Llama-3-70B Q4_K_M of benchmarks/source_inspect.py
(723 tensors, 128256 tokens, 280147 merges, 8.44 MiB). Prints medians and
minimums of:

* parse in a fresh process: the first parse after import, which includes
  one-time setup (the string-array regex is compiled on first use);
* parse from bytes and from a memoryview (what the local path passes: an
  mmap), repeated in one process;
* parse + ``metadata_from_gguf`` (the local part of the "< 50 ms" goal);
* reading every token and merge (decoding on first access, the cost that
  string arrays no longer pay up front).

With ``--baseline REV`` the same figures are printed for
``gpufleet/core/gguf.py`` as of git revision REV, loaded from ``git show``,
so before/after are measured on the same machine in the same minute.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpufleet.core.model_metadata import metadata_from_gguf  # noqa: E402
from tests.support import synthetic_models as sm  # noqa: E402

MiB = 1 << 20

# Run in a fresh interpreter: import the parser from a file, time one parse.
CHILD = """
import importlib.util, sys, time
sys.path.insert(0, sys.argv[3])
spec = importlib.util.spec_from_file_location("gguf_under_test", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.modules["gguf_under_test"] = mod
spec.loader.exec_module(mod)
data = open(sys.argv[2], "rb").read()
t = time.perf_counter()
mod.parse_gguf_header(data, file_size=int(sys.argv[4]))
print(time.perf_counter() - t)
"""


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def timed(fn, rounds: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        gc.collect()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3, min(times) * 1e3


def fresh(path: Path, head_file: Path, size: int, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(path), str(head_file), str(ROOT), str(size)],
            check=True, capture_output=True, text=True,
        ).stdout
        times.append(float(out))
    return statistics.median(times) * 1e3, min(times) * 1e3


def report(label: str, path: Path, head: bytes, size: int, head_file: Path, args: argparse.Namespace) -> None:
    mod = load(path, f"gguf_{label}")
    view = memoryview(head)

    def decode_all() -> None:
        h = mod.parse_gguf_header(head, file_size=size)
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            _ = h.get(key)[-1]

    rows = [
        ("parse, fresh process", fresh(path, head_file, size, args.processes)),
        ("parse bytes", timed(lambda: mod.parse_gguf_header(head, file_size=size), args.rounds)),
        ("parse memoryview", timed(lambda: mod.parse_gguf_header(view, file_size=size), args.rounds)),
        ("parse + metadata_from_gguf",
         timed(lambda: metadata_from_gguf(mod.parse_gguf_header(view, file_size=size), size), args.rounds)),
        ("parse + read all strings", timed(decode_all, max(3, args.rounds // 3))),
    ]
    print(f"\n{label} ({path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}):")
    for name, (med, low) in rows:
        print(f"  {name:28} median {med:7.1f} ms   min {low:7.1f} ms")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="in-process repetitions")
    ap.add_argument("--processes", type=int, default=7, help="fresh-process repetitions")
    ap.add_argument("--baseline", metavar="REV", help="also measure gpufleet/core/gguf.py at this git revision")
    args = ap.parse_args(argv)

    head, size = sm.llama_gguf(sm.LLAMA_70B_Q4_K_M)
    print(f"synthetic 70B header: {len(head) / MiB:.2f} MiB, "
          f"{len(sm.llama_tensors(sm.LLAMA_70B_Q4_K_M))} tensors, file {size / (1 << 30):.1f} GiB")
    with tempfile.TemporaryDirectory() as tmp:
        head_file = Path(tmp) / "head.bin"
        head_file.write_bytes(head)
        if args.baseline:
            old = Path(tmp) / "gguf_baseline.py"
            old.write_bytes(subprocess.run(["git", "show", f"{args.baseline}:gpufleet/core/gguf.py"],
                                           cwd=ROOT, check=True, capture_output=True).stdout)
            report(f"baseline {args.baseline}", old, head, size, head_file, args)
        report("working tree", ROOT / "gpufleet" / "core" / "gguf.py", head, size, head_file, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
