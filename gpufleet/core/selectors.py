"""Worker label selectors and manual GPU selections: parsed once, matched many times.

Syntax of one label expression (all expressions of a deployment must match, AND):

====================  ==========================================================
``key=value``         the label is present and equal (``key==value`` too)
``key!=value``        the label is absent, or present with another value
``key in (a,b)``      the label is present and one of the values
``key notin (a,b)``   the label is absent, or present with none of the values
``key`` / ``key exists``  the label is present (any value)
``!key``              the label is absent
====================  ==========================================================

The semantics follow Kubernetes label selectors (``!=`` and ``notin`` match a
worker without the label), so a user who knows one knows the other. A GPU
selection is ``WORKER:INDEX``. Errors say what was wrong and show the syntax.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Operator = Literal["=", "!=", "in", "notin", "exists", "!exists"]

_KEY = r"[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?"
_VALUE = r"[A-Za-z0-9._:/+-]*"
_KEY_RE = re.compile(rf"^{_KEY}$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")
_SET_RE = re.compile(rf"^(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_EQ_RE = re.compile(rf"^(?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>{_VALUE})$")
_EXISTS_RE = re.compile(rf"^(?P<neg>!)?\s*(?P<key>{_KEY})(\s+exists)?$")
_GPU_RE = re.compile(r"^(?P<worker>[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?):(?P<index>\d{1,4})$")

SELECTOR_SYNTAX = "key=value, key!=value, 'key in (a,b)', 'key notin (a,b)', key, 'key exists', !key"


class SelectorError(ValueError):
    """A selector could not be parsed; the message quotes it and shows the syntax."""


@dataclass(frozen=True)
class LabelExpression:
    """One parsed expression; :meth:`matches` decides, :meth:`explain` says why not."""

    key: str
    op: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "=":
            return value == self.values[0]
        if self.op == "!=":
            return value != self.values[0]
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        if self.op == "exists":
            return present
        return not present

    def text(self) -> str:
        if self.op in ("=", "!="):
            return f"{self.key}{self.op}{self.values[0]}"
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        return self.key if self.op == "exists" else f"!{self.key}"

    def explain(self, labels: Mapping[str, str]) -> str:
        """Why this worker does not match, naming the worker's actual value."""
        actual = f"{self.key}={labels[self.key]}" if self.key in labels else f"no label {self.key}"
        return f"label selector '{self.text()}' does not match ({actual})"


def _values(raw: str, expression: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in raw.split(","))
    if not values or any(not v or not _VALUE_RE.match(v) for v in values):
        raise SelectorError(
            f"worker selector {expression!r}: the value list ({raw}) must be non-empty "
            "values separated by commas, e.g. 'gpu in (a100,h100)'"
        )
    return values


def parse_expression(expression: str) -> LabelExpression:
    """Parse one expression or raise :class:`SelectorError` saying how to write it."""
    text = expression.strip()
    if m := _SET_RE.match(text):
        op: Operator = "in" if m["op"] == "in" else "notin"
        return LabelExpression(m["key"], op, _values(m["values"], expression))
    if m := _EQ_RE.match(text):
        if not m["value"]:
            raise SelectorError(f"worker selector {expression!r} has no value; write key=value or 'key exists'")
        return LabelExpression(m["key"], "!=" if m["op"] == "!=" else "=", (m["value"],))
    if m := _EXISTS_RE.match(text):
        return LabelExpression(m["key"], "!exists" if m["neg"] else "exists")
    raise SelectorError(f"invalid worker selector {expression!r}; use one of: {SELECTOR_SYNTAX}")


@dataclass(frozen=True)
class WorkerSelector:
    """All expressions must match (AND). An empty selector matches every worker."""

    expressions: tuple[LabelExpression, ...] = ()

    @classmethod
    def parse(cls, expressions: list[str] | tuple[str, ...]) -> WorkerSelector:
        return cls(tuple(parse_expression(e) for e in expressions))

    def mismatch(self, labels: Mapping[str, str]) -> str | None:
        """None when every expression matches, else the first failing one explained."""
        for expr in self.expressions:
            if not expr.matches(labels):
                return expr.explain(labels)
        return None


@dataclass(frozen=True, order=True)
class GpuRef:
    """One GPU named by the user: worker name and device index."""

    worker: str
    index: int

    def text(self) -> str:
        return f"{self.worker}:{self.index}"


def check_label(key: str, value: str) -> None:
    """A label a selector can match: the key as selectors write it, the value without spaces."""
    if not _KEY_RE.match(key) or len(key) > 63:
        raise SelectorError(f"invalid label key {key!r}: letters, digits, '.', '_', '/', '-', "
                            "starting and ending with a letter or digit, at most 63 characters")
    if not _VALUE_RE.match(value) or len(value) > 63:
        raise SelectorError(f"invalid value {value!r} of label {key!r}: letters, digits and . _ : / + -, "
                            "at most 63 characters")


def parse_gpu(text: str) -> GpuRef:
    m = _GPU_RE.match(text.strip())
    if not m:
        raise SelectorError(
            f"invalid GPU selection {text!r}: use WORKER:INDEX, e.g. --gpu node-a:0 "
            "(the worker name as `gpufleet workers` shows it, the GPU index as a number)"
        )
    return GpuRef(m["worker"], int(m["index"]))


def parse_gpus(texts: list[str] | tuple[str, ...]) -> tuple[GpuRef, ...]:
    refs = tuple(parse_gpu(t) for t in texts)
    seen: set[GpuRef] = set()
    for ref in refs:
        if ref in seen:
            raise SelectorError(f"GPU {ref.text()} is selected twice; name each GPU once")
        seen.add(ref)
    return refs
