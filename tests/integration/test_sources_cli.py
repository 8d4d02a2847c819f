"""`gpufleet search / files / inspect` against the fake hub (commands registered on a bare app)."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from gpufleet.cli.sources_cmd import register
from tests.support import synthetic_models as sm
from tests.support.fake_hub import FakeHub, VirtualFile
from tests.support.hub_fixtures import fake_hub  # noqa: F401

app = typer.Typer()
register(app)


@pytest.fixture
def repo(fake_hub: FakeHub) -> None:
    head, size = sm.llama_gguf(sm.LlamaShape(n_layers=5))
    files = {"README.md": b"hi", "m-Q4_K_M.gguf": VirtualFile(head, size),
             "m-Q8_0.gguf": VirtualFile(head, size * 2), "mmproj-m-F16.gguf": b"GGUF" + bytes(8)}
    for i, (h, s) in enumerate(sm.llama_gguf_shards(sm.LlamaShape(), 3)):
        files[f"m-F16-{i + 1:05d}-of-00003.gguf"] = VirtualFile(h, s)
    fake_hub.add_repo("org/m-GGUF", files, downloads=7, likes=2, token=None)


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.stdout, res.stderr


@pytest.mark.usefixtures("repo")
@pytest.mark.parametrize("hub", ["hf", "modelscope"])
def test_files_groups_quantizations_and_marks_the_default(hub: str) -> None:
    code, out, _ = run("files", hub, "org/m-GGUF")
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert ["gguf", "F16", "3/3"] == [r for r in rows if "F16" in r and "gguf" in r][0][:3]  # one row, 3 shards
    assert [r for r in rows if "m-Q4_K_M.gguf" in r][0][0] == "*"
    assert any(r[0] == "mmproj" for r in rows if r)
    assert "default without --file: Q4_K_M" in out


@pytest.mark.usefixtures("repo")
def test_inspect_table_and_json() -> None:
    code, out, _ = run("inspect", "--hf", "org/m-GGUF")
    assert code == 0 and "chose Q4_K_M" in out and "llama.cpp" in out
    code, out, _ = run("inspect", "--modelscope", "org/m-GGUF", "--file", "*Q8_0*", "--json", "--category", "embedding")
    doc = json.loads(out)
    assert code == 0 and [f["path"] for f in doc["metadata"]["files"]] == ["m-Q8_0.gguf"] and doc["metadata"]["category"] == "embedding"
    assert doc["metadata"]["n_layers"] == 5 and doc["backend"] == "llama.cpp"


@pytest.mark.usefixtures("repo")
@pytest.mark.parametrize(
    "args, code, message",
    [
        (("inspect", "--hf", "org/none"), 1, "hf:org/none: repository not found"),
        (("inspect", "--hf", "org/m-GGUF", "--file", "*IQ1*"), 1, "no GGUF file matches '*IQ1*'"),
        (("inspect", "--hf", "org/m-GGUF", "--backend", "vllm"), 1, "vllm cannot serve GGUF"),
        (("inspect", "--hf", "org/m-GGUF", "--category", "poetry"), 2, "unknown category 'poetry'"),
        (("inspect", "--hf", "a/b", "--local-path", "/x"), 2, "exactly one of"),
        (("inspect", "--local-path", "/no/such.gguf"), 1, "model path /no/such.gguf not found"),
    ],
)
def test_inspect_errors(args: tuple[str, ...], code: int, message: str) -> None:
    got, _, err = run(*args)
    assert got == code and message in err and "Traceback" not in err


@pytest.mark.usefixtures("repo")
def test_search_json() -> None:
    code, out, _ = run("search", "modelscope", "m-gguf", "--gguf", "--json")
    assert code == 0 and json.loads(out) == [{"repo": "org/m-GGUF", "downloads": 7, "likes": 2, "has_gguf": True}]
