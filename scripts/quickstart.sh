#!/usr/bin/env bash
# The main job on the embedded default: set up, start a one-machine cluster
# (Prefect server, gpufleet server, one node), deploy a generated tiny model and
# chat with it. Runs in the foreground; Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/gpufleet up --demo "$@"
