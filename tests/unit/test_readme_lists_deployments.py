"""The README names every Prefect deployment gpufleet registers (prefect.yaml), and its usage
block is what tests/e2e/test_readme.py runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def flow_name(entrypoint: str) -> str:
    """The `@flow(name=...)` of `path.py:function`, read from the source (no Prefect import)."""
    path, function = entrypoint.split(":")
    tree = ast.parse((ROOT / path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "flow":
                    for kw in deco.keywords:
                        if kw.arg == "name":
                            return str(ast.literal_eval(kw.value))
    raise AssertionError(f"{entrypoint}: no @flow(name=...)")


def test_the_readme_lists_every_prefect_deployment() -> None:
    declared = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    names = {f"{flow_name(d['entrypoint'])}/{d['name']}" for d in declared}
    assert {"reconcile/gpufleet", "serve-rpc-servers/gpufleet"} <= names
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"`([a-z-]+/gpufleet)`", readme))
    assert names <= listed, f"missing from the README: {sorted(names - listed)}"


def usage_block(readme: str) -> str:
    """The first ```bash block of the README's "Using it" section."""
    section = readme.split("\n## Using it", 1)[1]
    return section.split("```bash\n", 1)[1].split("\n```", 1)[0]


def test_the_usage_block_reads_instance_ids_from_ps_and_does_not_clash_with_the_quickstart() -> None:
    from gpufleet.demo.run import DEMO_NAME

    block = usage_block((ROOT / "README.md").read_text())
    assert f"--name {DEMO_NAME} " not in block
    for line in block.splitlines():
        words = line.split("#")[0].split()
        if words[:2] in (["gpufleet", "rm-instance"], ["gpufleet", "logs"]):
            assert "$" in words[2], f"an instance id written into the README: {line}"
