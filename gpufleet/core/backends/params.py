"""Parsing and checking of user-supplied backend parameters (`--backend-param`).

A parameter is one flag, optionally with its value: `--ctx-size=1024`,
`--ctx-size 1024` or `--flash-attn`. Keeping them as separate list items (not
one shell string) means no quoting rules and no injection through spaces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FLAG_RE = re.compile(r"^--?[A-Za-z0-9][A-Za-z0-9-]*$")


class BackendParamError(ValueError):
    """A backend parameter is malformed or not allowed; the message says how to fix it."""


@dataclass(frozen=True)
class BackendParam:
    flag: str
    value: str | None

    def as_args(self) -> list[str]:
        return [self.flag] if self.value is None else [self.flag, self.value]


def parse_param(raw: str) -> BackendParam:
    text = raw.strip()
    if not text.startswith("-"):
        raise BackendParamError(
            f"backend parameter {raw!r} must start with '-', e.g. --ctx-size=1024"
        )
    if "=" in text:
        flag, value = text.split("=", 1)
    elif " " in text:
        flag, value = text.split(" ", 1)
        value = value.strip()
    else:
        flag, value = text, None
    if not _FLAG_RE.match(flag):
        raise BackendParamError(
            f"backend parameter {raw!r} has an invalid flag name {flag!r}; "
            "use --name=value or --name"
        )
    if value is not None and value == "":
        raise BackendParamError(f"backend parameter {raw!r} has an empty value")
    return BackendParam(flag, value)


def parse_params(raw: list[str], managed: dict[str, str]) -> list[BackendParam]:
    """Parse every parameter; flags gpufleet sets itself (`managed`: flag -> why)
    are refused, because a second `--port` would silently break routing."""
    params = [parse_param(r) for r in raw]
    for p in params:
        if p.flag in managed:
            raise BackendParamError(
                f"backend parameter {p.flag} is set by gpufleet ({managed[p.flag]}); remove it"
            )
    return params


def find_value(params: list[BackendParam], *flags: str) -> str | None:
    """Value of the last occurrence of any of `flags` (the backend's own rule: last wins)."""
    value = None
    for p in params:
        if p.flag in flags:
            value = p.value
    return value
