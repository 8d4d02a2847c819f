"""Which executable runs llama.cpp on this node."""

from __future__ import annotations

import os
import shutil
import sys


def llama_server_executable() -> list[str]:
    """`GPUFLEET_LLAMA_SERVER` if set, else `llama-server` from PATH, else gpufleet's
    launcher over the xllamacpp wheel (a CPU build of llama.cpp's server)."""
    configured = os.environ.get("GPUFLEET_LLAMA_SERVER")
    if configured:
        return [configured]
    found = shutil.which("llama-server")
    if found:
        return [found]
    return [sys.executable, "-m", "gpufleet.runtimes.xllamacpp_launcher"]
