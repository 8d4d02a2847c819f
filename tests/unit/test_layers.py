"""The adapters (``gpufleet/``) never import the Prefect layer (``flows/ tasks/ workers/ blocks/``),
not even inside a function: the Prefect layer is passed in (gpufleet/prefect_layer.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gpufleet.prefect_layer import PrefectLayer, prefect_layer
from tests.unit.test_core_purity import imported_roots

ROOT = Path(__file__).resolve().parents[2]
PREFECT_LAYER = {"flows", "tasks", "workers", "blocks"}
ADAPTER_FILES = sorted((ROOT / "gpufleet").rglob("*.py"))


@pytest.mark.parametrize("path", ADAPTER_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_adapters_do_not_import_the_prefect_layer(path: Path) -> None:
    bad = imported_roots(path) & PREFECT_LAYER
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}; pass it in through gpufleet.prefect_layer"


@pytest.mark.parametrize("path", ADAPTER_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_adapters_do_not_import_modules_by_name(path: Path) -> None:
    """importlib.import_module("flows.x") would be the same cycle, hidden."""
    calls = [n for n in ast.walk(ast.parse(path.read_text()))
             if isinstance(n, ast.Attribute) and n.attr == "import_module"]
    assert not calls, f"{path.relative_to(ROOT)} imports a module by name"


def test_the_installed_prefect_layer_is_found_through_its_entry_point() -> None:
    layer = prefect_layer()
    assert isinstance(layer, PrefectLayer)
    assert layer.worker_class.__module__ == "workers.inprocess"
    assert layer.load_flow("flows/deploy.py:deploy").name == "deploy"
    assert {b.__name__ for b in layer.block_types} == {"GpufleetServer", "HubCredentials"}
