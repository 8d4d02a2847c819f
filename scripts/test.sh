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

# Chromium and its driver for the `web` tests (Debian's packages: Selenium drives them by path,
# nothing is downloaded at test time).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  fi
fi

# A Docker engine for the `docker` tests (installs docker.io once, starts dockerd if nothing answers).
scripts/start-dockerd.sh

# llama.cpp's rpc-server and an RPC llama-server for the `rpc` tests: built in the background on
# idle CPU while setup and the suite run (those tests run last and wait for it through the
# script's lock; an installed build makes this return at once). Started after the apt-get above,
# so the build's own apt-get never waits on it, and before setup.sh, whose pip install leaves the
# CPU mostly idle on a fresh machine. Its own session, so it can be stopped as a group.
build_log="$(scripts/build-llama-cpp.sh --print-dir).background.log"
mkdir -p "$(dirname "$build_log")"
setsid nice -n 19 scripts/build-llama-cpp.sh >"$build_log" 2>&1 </dev/null &
build_pid=$!
echo "building llama.cpp RPC binaries in the background (log: $build_log)"

# A run that ends before the background installs (a subset of tests, Ctrl-C) stops them rather
# than leave them behind; each is idempotent and resumes from scratch next time.
stop_background() {
  for pid in "$build_pid" "${engines_pid:-}"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      echo "stopping an unfinished background install (pid $pid; logs: $build_log ${engines_log:-})"
      kill -TERM -- "-$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
}
trap stop_background EXIT

scripts/setup.sh --test

# vLLM's CPU build in an engine environment for the `vllm` tests, installed in the background
# (it needs .venv, hence after setup.sh); those tests run last and wait for it on its lock.
engines_log="$(scripts/install-engines.sh --print-root).background.log"
mkdir -p "$(dirname "$engines_log")"
setsid nice -n 10 scripts/install-engines.sh >"$engines_log" 2>&1 </dev/null &
engines_pid=$!
echo "installing engine environments in the background (log: $engines_log)"

status=0
.venv/bin/python -m pytest "$@" || status=$?
exit "$status"
