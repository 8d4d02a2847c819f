"""Unknown backend flags are refused at deploy time, with the engine's own list (pure).

A typo in `--backend-param` would otherwise reach the node, where the engine
exits at start-up and the instance crash-loops. Each node asks its engines for
their flags once (`llama-server --help`, vLLM's API server `--help`, read when
the engine is found or installed) and reports them with the engine; the server
checks a deployment's parameters against what the workers that could run it
reported. An engine that reported no flags is not checked (nothing to check
against), which keeps older nodes working.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from gpufleet.core.backends.params import BackendParam

#: a flag at the start of a help line or after a comma/space: "-c,    --ctx-size N", "  --max-model-len MAX"
_FLAG_RE = re.compile(r"(?:^|[\s,{\[])(--?[A-Za-z][A-Za-z0-9_.-]*)")


class UnknownFlag(ValueError):
    """A backend parameter the engine does not take; the message names close matches."""


def parse_help_flags(help_text: str) -> list[str]:
    """Every flag an engine's ``--help`` mentions, sorted (``--no-x`` forms included).

    Help texts list a flag first on its line (after indentation), with aliases
    separated by commas; flags mentioned inside descriptions are kept too, which
    errs on accepting: a flag the engine mentions is never refused."""
    flags = {m.rstrip(".,") for m in _FLAG_RE.findall(help_text)}
    return sorted(f for f in flags if len(f) > 1 and f not in ("--", "-"))


def check_known_flags(params: Iterable[BackendParam], known: Iterable[str], engine: str, version: str) -> None:
    """Raise :class:`UnknownFlag` for the first parameter whose flag ``known`` lacks."""
    known_set = set(known)
    if not known_set:
        return
    for param in params:
        if param.flag in known_set:
            continue
        close = difflib.get_close_matches(param.flag, sorted(known_set), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise UnknownFlag(
            f"backend parameter {param.flag} is not a {engine} {version} flag (its --help does not list it){hint}"
        )
