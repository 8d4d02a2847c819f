"""The model routes the web page uses (`gpufleet search`, `files` and `inspect` through
the server): real app, real hub clients against the hub stand-in, real GGUF headers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gpufleet.server.app import create_app
from gpufleet.sources.resolve import clear_cache
from tests.support import synthetic_models as sm
from tests.support.fake_hub import FakeHub, VirtualFile
from tests.support.hub_fixtures import fake_hub  # noqa: F401

KINDS = ["huggingface", "modelscope"]
SMALL = sm.LlamaShape(n_layers=3, n_embd=64, n_heads=4, n_kv_heads=2, n_ff=128, n_vocab=300)


@pytest.fixture
def api(tmp_path: Path):  # noqa: ANN201
    clear_cache()
    app = create_app(f"sqlite:///{tmp_path / 'db.sqlite'}", trigger=lambda op, params: "", run_controller=False, auth=False)
    with TestClient(app) as client:
        yield client


def quant_repo(hub: FakeHub) -> None:
    files: dict[str, object] = {"README.md": b"model card"}
    for quant, ftype in (("Q8_0", 7), ("Q4_K_M", 15), ("F16", 1)):
        head, size = sm.llama_gguf(dataclasses.replace(SMALL, file_type=ftype))
        files[f"small-{quant}.gguf"] = VirtualFile(head, size * (3 if quant == "F16" else 1))
    files["mmproj-small-F16.gguf"] = VirtualFile(*sm.llama_gguf(SMALL))
    hub.add_repo("org/small-GGUF", files, downloads=50)  # type: ignore[arg-type]
    hub.add_repo("org/small-base", {"config.json": b"{}"}, downloads=900)


@pytest.mark.parametrize("kind", KINDS)
def test_search_and_gguf_filter(api: TestClient, fake_hub: FakeHub, kind: str) -> None:
    quant_repo(fake_hub)
    r = api.get(f"/v1/hubs/{kind}/models", params={"search": "small"})
    assert r.status_code == 200, r.text
    assert [h["repo"] for h in r.json()] == ["org/small-base", "org/small-GGUF"]  # most downloaded first
    r = api.get(f"/v1/hubs/{kind}/models", params={"search": "small", "gguf": "true"})
    assert [h["repo"] for h in r.json()] == ["org/small-GGUF"]
    assert api.get(f"/v1/hubs/{kind}/models", params={"search": "nothing-like-it"}).json() == []


@pytest.mark.parametrize("kind", KINDS)
def test_files_grouped_by_quantization_with_the_default_marked(api: TestClient, fake_hub: FakeHub, kind: str) -> None:
    quant_repo(fake_hub)
    r = api.get(f"/v1/hubs/{kind}/files", params={"repo": "org/small-GGUF"})
    assert r.status_code == 200, r.text
    listing = r.json()
    quants = [g["quantization"] for g in listing["gguf"]]
    assert sorted(quants) == ["F16", "Q4_K_M", "Q8_0"]
    assert quants[-1] == "F16"  # smallest first; F16 was made 3 times bigger
    [default] = [g for g in listing["gguf"] if g["default"]]
    assert default["quantization"] == "Q4_K_M" and listing["default_file"] == "small-Q4_K_M.gguf"
    assert default["size"] == default["files"][0]["size"] > 0
    assert "chose Q4_K_M" in listing["note"]
    assert [g["files"][0]["path"] for g in listing["mmproj"]] == ["mmproj-small-F16.gguf"]
    assert [f["path"] for f in listing["other"]] == ["README.md"]


def test_hub_errors_are_named_and_typed(api: TestClient, fake_hub: FakeHub) -> None:
    r = api.get("/v1/hubs/huggingface/files", params={"repo": "org/missing"})
    assert r.status_code == 404 and "org/missing" in r.json()["detail"]
    assert api.get("/v1/hubs/github/models", params={"search": "x"}).status_code == 422  # unknown hub
    assert api.get("/v1/hubs/huggingface/models", params={"search": ""}).status_code == 422
    fake_hub.add_repo("org/gated-GGUF", {"m-Q4_K_M.gguf": b"GGUF"}, token="hf_secret")  # no token is configured
    r = api.get("/v1/hubs/huggingface/files", params={"repo": "org/gated-GGUF"})
    assert r.status_code == 403, r.text  # gated: a token is needed, and the message says so
    assert "org/gated-GGUF" in r.json()["detail"] and "token" in r.json()["detail"]


def test_inspect_local_and_hub(api: TestClient, fake_hub: FakeHub, tiny_gguf: Path, tmp_path: Path) -> None:
    r = api.post("/v1/models/inspect", json={"source": {"kind": "local_path", "local_path": str(tiny_gguf)}})
    assert r.status_code == 200, r.text
    info = r.json()
    assert (info["backend"], info["category"], info["metadata"]["format"]) == ("llama.cpp", "llm", "gguf")
    r = api.post("/v1/models/inspect", json={"source": {"kind": "local_path", "local_path": str(tiny_gguf)},
                                             "category": "embedding"})
    assert r.json()["category"] == "embedding"  # the override, as a deploy would record it
    r = api.post("/v1/models/inspect", json={"source": {"kind": "local_path", "local_path": str(tmp_path / "nope.gguf")}})
    assert r.status_code == 404 and "not found" in r.json()["detail"] and "workers" in r.json()["detail"]
    bad = tmp_path / "notes.gguf"
    bad.write_text("not a model")
    r = api.post("/v1/models/inspect", json={"source": {"kind": "local_path", "local_path": str(bad)}})
    assert r.status_code == 400 and "not a valid GGUF" in r.json()["detail"]
    r = api.post("/v1/models/inspect", json={"source": {"kind": "local_path", "local_path": str(tiny_gguf)},
                                             "backend": "vllm"})
    assert r.status_code == 400 and "vllm cannot serve GGUF" in r.json()["detail"]
    quant_repo(fake_hub)
    r = api.post("/v1/models/inspect", json={"source": {"kind": "huggingface", "repo": "org/small-GGUF",
                                                        "file": "*Q8_0*"}})
    assert r.status_code == 200, r.text
    assert r.json()["file"] == "small-Q8_0.gguf" and r.json()["metadata"]["n_layers"] == 3
    assert api.post("/v1/models/inspect", json={"source": {"kind": "local_path"}}).status_code == 422
