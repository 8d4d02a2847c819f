"""Where a node finds the llama.cpp binaries that distributed instances need.

One instance spread over several workers runs llama.cpp's own `rpc-server` on every helper
worker and a `llama-server` built with RPC support (`-DGGML_RPC=ON`) on the main one. The
`xllamacpp` wheel that nodes normally run has neither, so `scripts/build-llama-cpp.sh` builds
both from a pinned llama.cpp into a per-user cache directory; this module applies the same
directory rule and the environment overrides, so the node and the tests agree on the files
without running anything (filesystem and environment only).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

LLAMA_CPP_BUILD = "b11434"

RPC_SERVER_ENV = "GPUFLEET_RPC_SERVER"
RPC_LLAMA_SERVER_ENV = "GPUFLEET_RPC_LLAMA_SERVER"
HOME_ENV = "GPUFLEET_LLAMA_CPP_HOME"

# The names llama.cpp's rpc-server has had: `rpc-server` in releases and distribution packages,
# `ggml-rpc-server` as the CMake target of this build.
_RPC_SERVER_NAMES = ("rpc-server", "ggml-rpc-server")

_HOW_TO_FIX = f"run scripts/build-llama-cpp.sh or set {RPC_SERVER_ENV} / {RPC_LLAMA_SERVER_ENV}"


def install_dir() -> Path:
    """`$GPUFLEET_LLAMA_CPP_HOME`, else `${XDG_CACHE_HOME:-~/.cache}/gpufleet/llama.cpp-<build>`.

    The same rule as `scripts/build-llama-cpp.sh --print-dir` (an empty variable counts as unset,
    as `${VAR:-…}` does in the script), so what the script installs is what a node finds.
    """
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "gpufleet" / f"llama.cpp-{LLAMA_CPP_BUILD}"


def rpc_server_executable() -> list[str] | None:
    """`$GPUFLEET_RPC_SERVER`, else the built `rpc-server`, else `rpc-server`/`ggml-rpc-server`
    on PATH, else None.

    Any rpc-server of a compatible llama.cpp will do for a helper worker, so PATH is a valid
    last resort. An override is returned as given, even if missing, so that
    `rpc_unavailable_reason` can name the file the operator pointed at.
    """
    configured = os.environ.get(RPC_SERVER_ENV)
    if configured:
        return [_resolve(configured)]
    built = install_dir() / "bin" / "rpc-server"
    if _is_executable_file(built):
        return [str(built)]
    for name in _RPC_SERVER_NAMES:
        found = shutil.which(name)
        if found:
            return [found]
    return None


def rpc_llama_server_executable() -> list[str] | None:
    """`$GPUFLEET_RPC_LLAMA_SERVER`, else the built `llama-server`, else None.

    A `llama-server` on PATH is not used: nothing says it was built with RPC, and one without
    it fails only when the instance starts, on an `--rpc` flag it does not know.
    """
    configured = os.environ.get(RPC_LLAMA_SERVER_ENV)
    if configured:
        return [_resolve(configured)]
    built = install_dir() / "bin" / "llama-server"
    if _is_executable_file(built):
        return [str(built)]
    return None


def rpc_unavailable_reason() -> str | None:
    """None when both binaries exist and are executable; else one sentence naming what is
    missing (the file, when one was configured or expected) and how to fix it.

    Nodes put this in a distributed instance's ERROR or PENDING reason, and the tests in their
    failure message, so it has to say which file and what to do.
    """
    problems = [
        problem
        for problem in (
            _problem("rpc-server", rpc_server_executable(), RPC_SERVER_ENV, "rpc-server"),
            _problem(
                "RPC-enabled llama-server",
                rpc_llama_server_executable(),
                RPC_LLAMA_SERVER_ENV,
                "llama-server",
            ),
        )
        if problem
    ]
    if not problems:
        return None
    return f"llama.cpp RPC binaries unavailable: {'; '.join(problems)} ({_HOW_TO_FIX})."


def _problem(what: str, command: list[str] | None, env: str, built_name: str) -> str | None:
    """Why `command` cannot run `what`, or None when it can."""
    if command is None:
        expected = install_dir() / "bin" / built_name
        state = "is not an executable file" if expected.exists() else "does not exist"
        return f"no {what} ({expected} {state} and {env} is not set)"
    executable = Path(command[0])
    source = f"{env}={command[0]}" if os.environ.get(env) else str(executable)
    if not executable.exists():
        return f"{what} {source} does not exist"
    if not _is_executable_file(executable):
        return f"{what} {source} is not an executable file"
    return None


def _resolve(configured: str) -> str:
    """A bare command name in an override is looked up on PATH, as a shell would; a path (or a
    name PATH lacks) is kept as given so the reason can name it."""
    if os.sep in configured:
        return configured
    return shutil.which(configured) or configured


def _is_executable_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)
