"""Worker selectors and GPU selections: parsing, matching, and the errors users see."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gpufleet.core.placement_spec import PlacementSpec
from gpufleet.core.schemas import DeploymentSpec, ModelSource
from gpufleet.core.selectors import GpuRef, SelectorError, WorkerSelector, parse_expression, parse_gpus

LABELS = {"gpu": "a100", "zone": "east", "tier": "prod"}


@pytest.mark.parametrize(
    ("expression", "matches"),
    [
        ("gpu=a100", True),
        ("gpu==a100", True),
        ("gpu=h100", False),
        ("gpu!=h100", True),
        ("missing!=x", True),  # != matches a worker without the label (Kubernetes semantics)
        ("gpu in (h100,a100)", True),
        ("gpu in (h100, l40s)", False),
        ("missing in (a)", False),
        ("gpu notin (h100)", True),
        ("gpu notin (a100,h100)", False),
        ("missing notin (a)", True),
        ("zone", True),
        ("zone exists", True),
        ("missing exists", False),
        ("!missing", True),
        ("!zone", False),
        ("  tier = prod ", True),
    ],
)
def test_expression_matches(expression: str, matches: bool) -> None:
    assert parse_expression(expression).matches(LABELS) is matches


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("gpu=", "has no value"),
        ("gpu in ()", "must be non-empty values"),
        ("gpu in (a,,b)", "must be non-empty values"),
        ("gpu ~ a", "invalid worker selector"),
        ("=a100", "invalid worker selector"),
        ("gpu in a100", "invalid worker selector"),
    ],
)
def test_bad_expression_says_how(expression: str, message: str) -> None:
    with pytest.raises(SelectorError, match=message) as err:
        parse_expression(expression)
    assert repr(expression) in str(err.value) or expression in str(err.value)


def test_all_expressions_must_match_and_the_first_failure_is_explained() -> None:
    sel = WorkerSelector.parse(["gpu=a100", "zone in (west,south)", "!spot"])
    assert sel.mismatch(LABELS) == "label selector 'zone in (west,south)' does not match (zone=east)"
    assert sel.mismatch({"gpu": "a100", "zone": "west"}) is None
    assert WorkerSelector.parse(["x=1"]).mismatch({}) == "label selector 'x=1' does not match (no label x)"
    assert WorkerSelector().mismatch({}) is None


def test_gpu_selection() -> None:
    assert parse_gpus(["node-a:0", " node-b:12 "]) == (GpuRef("node-a", 0), GpuRef("node-b", 12))
    for bad in ("node-a", "node-a:x", ":0", "Node_A:0", "node-a:-1"):
        with pytest.raises(SelectorError, match="use WORKER:INDEX"):
            parse_gpus([bad])
    with pytest.raises(SelectorError, match="selected twice"):
        parse_gpus(["a:0", "a:0"])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"worker_selector": ["gpu in ()"]}, "must be non-empty values"),
        ({"gpu_selector": ["node-a"]}, "use WORKER:INDEX"),
        ({"gpu_selector": ["a:0"], "gpus_per_replica": 2}, "only 1 GPU"),
        ({"overcommit": True}, "applies to a manual GPU selection"),
        ({"strategy": "random"}, "spread"),
    ],
)
def test_spec_refuses_bad_placement(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PlacementSpec(**fields)


def test_spec_normalises() -> None:
    spec = PlacementSpec(worker_selector=[" gpu=a100 "], gpu_selector=["node-a:00"])
    assert (spec.worker_selector, spec.gpu_selector) == (["gpu=a100"], ["node-a:0"])


@pytest.mark.parametrize(("flag", "message"), [("cpu_offloading", "--cpu-offloading is for llama.cpp"),
                                               ("distributed", "--distributed is supported for llama.cpp")])
def test_backend_limits(flag: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DeploymentSpec(name="x", backend="vllm", source=ModelSource(local_path="/m"),
                       placement=PlacementSpec(**{flag: True}))
