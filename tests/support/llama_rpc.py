"""The llama.cpp RPC binaries for the tests marked `rpc`.

`scripts/test.sh` starts `scripts/build-llama-cpp.sh` in the background before pytest, and the
`rpc` tests run last; by then the build has usually finished. `ensure_rpc_binaries` runs the
script once more in the foreground: it returns at once when the build is installed, waits on the
background build through the script's lock, or builds here (a plain `pytest` run). A build that
fails makes the tests fail with the build log's tail, never skip.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from gpufleet.runtimes.llama_rpc import (
    RPC_LLAMA_SERVER_ENV,
    RPC_SERVER_ENV,
    install_dir,
    rpc_llama_server_executable,
    rpc_server_executable,
    rpc_unavailable_reason,
)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-llama-cpp.sh"
# A cold build is about 6 minutes on 2 idle cores; this leaves room for a slow or busy machine.
BUILD_TIMEOUT_S = 3600
LOG_TAIL_LINES = 40


def ensure_rpc_binaries() -> tuple[list[str], list[str]]:
    """(llama_server_cmd, rpc_server_cmd), building them first if needed.

    Raises RuntimeError, with the build's output and log tail, when the script fails or the
    binaries are still unavailable after it. When both overrides are set the operator has said
    which binaries to use, so nothing is built.
    """
    if not (os.environ.get(RPC_SERVER_ENV) and os.environ.get(RPC_LLAMA_SERVER_ENV)):
        _build()
    reason = rpc_unavailable_reason()
    llama_server = rpc_llama_server_executable()
    rpc_server = rpc_server_executable()
    if reason is not None or llama_server is None or rpc_server is None:
        raise RuntimeError(f"{reason}\n{_log_tail()}")
    return llama_server, rpc_server


def _build() -> None:
    """Run the build script: at once when installed, else waiting on or doing the build."""
    result = _run_build_script()
    if result.returncode != 0:
        output = _tail(result.stderr)
        if "last lines of" not in output:  # the script shows the log tail itself when it can
            output += f"\n{_log_tail()}"
        raise RuntimeError(f"{SCRIPT.name} failed with exit status {result.returncode}:\n{output}")


def _run_build_script() -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["bash", str(SCRIPT)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{SCRIPT.name} still running after {BUILD_TIMEOUT_S} s\n{_log_tail()}") from exc


def _log_tail() -> str:
    """The end of the script's full build log (`<install dir>.log`), where compiler errors are."""
    log = Path(f"{install_dir()}.log")
    if not log.exists():
        return f"(no build log at {log})"
    return f"last lines of {log}:\n{_tail(log.read_text(errors='replace'))}"


def _tail(text: str) -> str:
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])
