"""Secret environment variables of deployments, and the variables only admins may set.

A deployment's ``env`` holds every variable its backends get; ``secret_keys`` names those
whose values are secret. Whatever leaves the server for a person or for Prefect (API views,
CLI output, flow run parameters, log headers) carries :data:`MASK` instead of such a value;
only a node, for an instance placed on it, reads them in clear (it must start the backend).

Loader variables change which code a process runs (``LD_PRELOAD`` injects a library into the
engine, ``PYTHONPATH`` shadows its modules): setting one is running code on the worker, so
only admins may (gpufleet.server routes answer 403 to anyone else).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

MASK = "***"

#: variables that change how a process loads code; the ``LD_``/``DYLD_`` families entirely
LOADER_VARS = frozenset({
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LD_BIND_NOW", "LD_DEBUG", "LD_PROFILE",
    "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONINSPECT", "PYTHONEXECUTABLE",
    "PYTHONPLATLIBDIR", "PYTHONSAFEPATH", "NODE_OPTIONS", "NODE_PATH", "PERL5OPT", "PERL5LIB", "PERLLIB",
    "RUBYOPT", "RUBYLIB", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH",
    "BASH_ENV", "ENV", "PROMPT_COMMAND", "SHELLOPTS", "GCONV_PATH", "MALLOC_CONF", "LUA_PATH", "LUA_CPATH",
    "OPENSSL_CONF", "PATH",
})
_LOADER_PREFIXES = ("LD_", "DYLD_")


def loader_vars(names: Iterable[str]) -> list[str]:
    """The names among these that change how a process loads code (sorted)."""
    return sorted(n for n in names if n.upper() in LOADER_VARS or n.upper().startswith(_LOADER_PREFIXES))


def masked_env(env: Mapping[str, str], secret_keys: Iterable[str]) -> dict[str, str]:
    secret = set(secret_keys)
    return {k: (MASK if k in secret else v) for k, v in env.items()}


def unmask_env(env: Mapping[str, str], secret_keys: Iterable[str], current: Mapping[str, str]) -> dict[str, str]:
    """``env`` with each masked secret value replaced by ``current``'s (what the caller was shown
    is what it sends back, e.g. a flow registering the deployment it was started for)."""
    secret = set(secret_keys)
    return {k: (current.get(k, v) if k in secret and v == MASK else v) for k, v in env.items()}


def still_masked(env: Mapping[str, str], secret_keys: Iterable[str]) -> list[str]:
    return sorted(k for k in secret_keys if env.get(k) == MASK)
