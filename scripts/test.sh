#!/usr/bin/env bash
# Set up and run the whole test suite (unit, store on SQLite and PostgreSQL,
# end-to-end journeys against real Prefect, gpufleet and llama.cpp servers).
set -euo pipefail
cd "$(dirname "$0")/.."

# PostgreSQL server binaries for the store tests (the tests start their own server on 127.0.0.1).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "${GPUFLEET_TEST_POSTGRES_URL:-}" ]; then
  if [ "$(id -u)" = "0" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
fi

scripts/setup.sh --test
exec .venv/bin/python -m pytest "$@"
