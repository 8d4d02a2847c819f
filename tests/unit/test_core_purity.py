"""The core imports no Prefect, SQL, HTTP or subprocess code: it stays pure and fast."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "gpufleet" / "core"
FORBIDDEN = {
    "prefect", "sqlalchemy", "alembic", "httpx", "requests", "urllib", "http", "socket",
    "subprocess", "fastapi", "uvicorn", "docker", "pynvml", "huggingface_hub", "modelscope",
    "asyncio", "threading", "multiprocessing", "os", "shutil", "gguf", "numpy",
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


CORE_FILES = sorted(CORE.rglob("*.py"))


def test_core_has_modules() -> None:
    assert len(CORE_FILES) >= 8


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(CORE)))
def test_core_module_imports_nothing_impure(path: Path) -> None:
    bad = imported_roots(path) & FORBIDDEN
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(CORE)))
def test_core_imports_only_core_from_gpufleet(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpufleet"):
            assert node.module.startswith("gpufleet.core"), f"{path.name} imports {node.module}"
