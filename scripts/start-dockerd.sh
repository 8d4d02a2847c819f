#!/usr/bin/env bash
# A Docker engine for the `docker` tests and for nodes run with `--runtime docker`.
#
# Idempotent: installs Debian's docker.io when dockerd is missing, starts dockerd when
# nothing answers on its socket (as root; its log goes to $GPUFLEET_DOCKERD_LOG), waits
# for the socket, then builds the local images the tests need. There is no registry
# here, so the images are made with `docker import` from a root filesystem written by
# gpufleet itself and tagged with a hash of their content: an unchanged image is found
# and not rebuilt. Prints the host-runtime image reference on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

sock="${DOCKER_HOST:-unix:///var/run/docker.sock}"
sock_path="${sock#unix://}"
log="${GPUFLEET_DOCKERD_LOG:-/var/log/gpufleet-dockerd.log}"

as_root() { if [ "$(id -u)" = "0" ]; then "$@"; else sudo "$@"; fi; }

if ! command -v dockerd >/dev/null 2>&1; then
  echo "installing docker.io (dockerd) with apt"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi

docker_up() { docker -H "$sock" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if ! docker_up; then
  echo "starting dockerd (log: $log)"
  # Own session, so that the test run's process group does not take it down with it.
  as_root setsid dockerd --host "$sock" >>"$log" 2>&1 </dev/null &
  for _ in $(seq 1 300); do
    docker_up && break
    sleep 0.1
  done
  docker_up || { echo "dockerd did not answer on $sock within 30 s; its log:" >&2; tail -n 30 "$log" >&2; exit 1; }
fi
echo "Docker engine $(docker -H "$sock" version --format '{{.Server.Version}}') on $sock"

# The base image of the host-runtime mode (docs/runtimes.md), cached by content hash. Before
# scripts/setup.sh made the virtual environment there is no gpufleet to build it with; the docker
# tests build it themselves then (the same function, the same tag).
python="${GPUFLEET_PYTHON:-.venv/bin/python}"
if [ -x "$python" ] && "$python" -c "import docker, gpufleet" 2>/dev/null; then
  "$python" -m gpufleet.node.runtimes.host_image
else
  echo "no gpufleet environment yet ($python): the host-runtime image is built by the tests"
fi
