"""Metadata from Hugging Face and ModelScope through the real clients, against the
fake hub: headers by range only, file choice, sharded models, and clear errors."""

from __future__ import annotations

import json

import pytest

from gpufleet.core.schemas import ModelSource
from gpufleet.sources import (
    FileNotInRepo,
    GatedRepo,
    HubUnavailable,
    NotAModel,
    RepoNotFound,
    read_metadata,
)
from gpufleet.sources.resolve import clear_cache, hub_for
from tests.support import synthetic_models as sm
from tests.support.fake_hub import FakeHub, VirtualFile
from tests.support.hub_fixtures import fake_hub  # noqa: F401

KINDS = ["huggingface", "modelscope"]
MiB = 1 << 20
SMALL = sm.LlamaShape(n_layers=3, n_embd=64, n_heads=4, n_kv_heads=2, n_ff=128, n_vocab=300)


def n_elements(tensors: list[tuple[str, tuple[int, ...], int]]) -> int:
    total = 0
    for _, shape, _ in tensors:
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def range_gets(hub: FakeHub, path: str) -> list:
    return [r for r in hub.requests("GET", path) if r.range]


@pytest.mark.parametrize("kind", KINDS)
def test_70b_gguf_header_costs_three_range_requests(fake_hub: FakeHub, kind: str) -> None:
    head, size = sm.llama_gguf(sm.LLAMA_70B_Q4_K_M)
    fake_hub.add_repo("org/big-GGUF", {"big-Q4_K_M.gguf": VirtualFile(head, size)})
    meta = read_metadata(ModelSource(kind=kind, repo="org/big-GGUF"))
    assert (meta.format, meta.architecture, meta.n_layers, meta.quantization) == ("gguf", "llama", 80, "Q4_K_M")
    assert meta.n_params == n_elements(sm.llama_tensors(sm.LLAMA_70B_Q4_K_M))
    assert meta.file_size == size and [f.path for f in meta.files] == ["big-Q4_K_M.gguf"]
    gets = range_gets(fake_hub, "big-Q4_K_M.gguf")
    sent = sum(r.body_bytes for r in gets)
    assert len(gets) <= 3, [r.range for r in gets]
    assert len(head) <= sent <= len(head) + 4 * MiB  # the header, not the 45 GB behind it


@pytest.mark.parametrize("kind", KINDS)
def test_default_quantization_glob_and_shards(fake_hub: FakeHub, kind: str) -> None:
    files = {}
    for quant, ftype in (("Q8_0", 7), ("F16", 1)):
        shape = sm.LlamaShape(**{**SMALL.__dict__, "file_type": ftype})
        head, size = sm.llama_gguf(shape)
        files[f"m-{quant}.gguf"] = VirtualFile(head, size)
    shards = sm.llama_gguf_shards(SMALL, 3)
    for i, (head, size) in enumerate(shards):
        files[f"Q4_K_M/m-Q4_K_M-{i + 1:05d}-of-00003.gguf"] = VirtualFile(head, size)
    files["mmproj-m-F16.gguf"] = b"GGUF" + bytes(60)
    fake_hub.add_repo("org/m-GGUF", files)

    meta = read_metadata(ModelSource(kind=kind, repo="org/m-GGUF"))  # no --file: Q4_K_M, all three shards
    assert len(meta.files) == 3 and meta.file_size == sum(s for _, s in shards)
    assert meta.n_params == n_elements(sm.llama_tensors(SMALL))  # tensors of every shard counted
    assert meta.n_layers == 3

    meta = read_metadata(ModelSource(kind=kind, repo="org/m-GGUF", file="*Q8_0*"))
    assert [f.path for f in meta.files] == ["m-Q8_0.gguf"] and meta.quantization == "Q8_0"


@pytest.mark.parametrize("kind", KINDS)
def test_sharded_safetensors_exact_counts(fake_hub: FakeHub, kind: str) -> None:
    tensors = sm.llama_hf_tensors(layers=2, hidden=64, heads=4, kv_heads=2, ff=128, vocab=256)
    h1, s1 = sm.safetensors_header(tensors[:8])
    h2, s2 = sm.safetensors_header(tensors[8:])
    names = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {t[0]: names[0] if i < 8 else names[1] for i, t in enumerate(tensors)}}
    fake_hub.add_repo("org/llama-hf", {
        "config.json": sm.llama_config(2, 64, 4, 2, 128, 256),
        "model.safetensors.index.json": json.dumps(index).encode(),
        names[0]: VirtualFile(h1, s1), names[1]: VirtualFile(h2, s2),
        "tokenizer.json": b"{}", "original/consolidated.safetensors": VirtualFile(h1, s1),
    })
    meta = read_metadata(ModelSource(kind=kind, repo="org/llama-hf"))
    # embed 256*64 + per layer (64 + 64*64 + 32*64*2 + 64*64 + 64 + 128*64*3) + 64 + lm_head 256*64
    per_layer = 64 + 4096 + 2048 * 2 + 4096 + 64 + 8192 * 3
    assert meta.n_params == 16384 + 2 * per_layer + 64 + 16384
    assert meta.weight_bytes_by_dtype == {"BF16": meta.n_params * 2}
    assert meta.layer_bytes == [per_layer * 2, per_layer * 2]
    assert (meta.format, meta.architecture, meta.category) == ("safetensors", "LlamaForCausalLM", "llm")
    assert (meta.n_heads, meta.n_kv_heads, meta.head_dim_k, meta.context_length) == (4, 2, 16, 8192)
    assert [f.path for f in meta.files] == list(names)  # not original/
    assert meta.file_size == s1 + s2


@pytest.mark.parametrize("kind", KINDS)
def test_embedding_repo_category(fake_hub: FakeHub, kind: str) -> None:
    head, size = sm.safetensors_header([("embeddings.word_embeddings.weight", "F32", (100, 32)),
                                        ("encoder.layer.0.attention.self.query.weight", "F32", (32, 32))])
    fake_hub.add_repo("org/bge-small", {
        "config.json": json.dumps({"architectures": ["BertModel"], "hidden_size": 32, "num_attention_heads": 2,
                                   "num_hidden_layers": 1, "max_position_embeddings": 512}).encode(),
        "model.safetensors": VirtualFile(head, size), "modules.json": b"[]",
    })
    meta = read_metadata(ModelSource(kind=kind, repo="org/bge-small"))
    assert meta.category == "embedding" and meta.n_params == 100 * 32 + 32 * 32
    assert read_metadata(ModelSource(kind=kind, repo="org/bge-small"), category="reranker").category == "reranker"


@pytest.mark.parametrize("kind", KINDS)
def test_errors_name_the_repo_and_file(fake_hub: FakeHub, kind: str) -> None:
    head, size = sm.llama_gguf(SMALL)
    fake_hub.add_repo("org/ok-GGUF", {"ok-Q4_K_M.gguf": VirtualFile(head, size)})
    fake_hub.add_repo("org/docs", {"README.md": b"no model here"})
    with pytest.raises(RepoNotFound, match="org/nope"):
        read_metadata(ModelSource(kind=kind, repo="org/nope"))
    with pytest.raises(FileNotInRepo, match=r"org/ok-GGUF.*\*Q2_K\*.*ok-Q4_K_M.gguf"):
        read_metadata(ModelSource(kind=kind, repo="org/ok-GGUF", file="*Q2_K*"))
    with pytest.raises(NotAModel, match="org/docs holds no GGUF or safetensors model"):
        read_metadata(ModelSource(kind=kind, repo="org/docs"))


@pytest.mark.parametrize("kind", KINDS)
def test_gated_repo_needs_the_token_which_never_shows(
    fake_hub: FakeHub, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    head, size = sm.llama_gguf(SMALL)
    fake_hub.add_repo("org/gated-GGUF", {"g-Q4_K_M.gguf": VirtualFile(head, size)}, token="sekrit-123")
    with pytest.raises(GatedRepo, match="org/gated-GGUF") as exc:
        read_metadata(ModelSource(kind=kind, repo="org/gated-GGUF"))
    assert "sekrit" not in str(exc.value)
    monkeypatch.setenv("HF_TOKEN" if kind == "huggingface" else "MODELSCOPE_API_TOKEN", "sekrit-123")
    assert read_metadata(ModelSource(kind=kind, repo="org/gated-GGUF")).n_layers == 3


@pytest.mark.parametrize("kind", KINDS)
def test_transient_failures_are_retried_then_reported(fake_hub: FakeHub, kind: str) -> None:
    head, size = sm.llama_gguf(SMALL)
    fake_hub.add_repo("org/flaky-GGUF", {"f-Q4_K_M.gguf": VirtualFile(head, size)})
    fake_hub.fail("f-Q4_K_M.gguf", times=2, status=503)
    assert read_metadata(ModelSource(kind=kind, repo="org/flaky-GGUF")).n_layers == 3
    assert [r.status for r in fake_hub.requests("GET", "f-Q4_K_M.gguf")][:3] == [503, 503, 206]
    fake_hub.fail("f-Q4_K_M.gguf", times=100, status=502)
    clear_cache()  # the first read is cached by ETag; read the header again
    with pytest.raises(HubUnavailable, match=r"org/flaky-GGUF/f-Q4_K_M.gguf.*gave up after 5 attempts"):
        read_metadata(ModelSource(kind=kind, repo="org/flaky-GGUF"))


def test_hf_tree_pagination_lists_every_file(fake_hub: FakeHub) -> None:
    files = {f"docs/page{i:03d}.md": b"x" for i in range(120)}  # 120 + dirs > 2 pages of 50
    head, size = sm.llama_gguf(SMALL)
    files["zz-last-Q4_K_M.gguf"] = VirtualFile(head, size)
    fake_hub.add_repo("org/many", files)
    listed = hub_for("huggingface").list_files("org/many", None)
    assert len(listed) == 121
    assert len(fake_hub.requests("GET", "/tree/")) == 3  # pages of 50 entries, following Link: rel="next"


@pytest.mark.parametrize("kind", KINDS)
def test_search_with_gguf_filter(fake_hub: FakeHub, kind: str) -> None:
    head, size = sm.llama_gguf(SMALL)
    fake_hub.add_repo("org/qwen-GGUF", {"q-Q4_K_M.gguf": VirtualFile(head, size)}, downloads=50, likes=3)
    fake_hub.add_repo("org/qwen", {"config.json": b"{}"}, downloads=500)
    fake_hub.add_repo("org/llama", {"config.json": b"{}"}, downloads=900)
    hub = hub_for(kind)
    assert [h.repo for h in hub.search("qwen", gguf=False, limit=10)] == ["org/qwen", "org/qwen-GGUF"]
    hits = hub.search("qwen", gguf=True, limit=10)
    assert [(h.repo, h.downloads, h.has_gguf) for h in hits] == [("org/qwen-GGUF", 50, True)]


@pytest.mark.parametrize("kind, default_rev", [("huggingface", "main"), ("modelscope", "master")])
def test_revisions(fake_hub: FakeHub, kind: str, default_rev: str) -> None:
    head, size = sm.llama_gguf(SMALL)
    repo = fake_hub.add_repo("org/rev-GGUF", {"r-Q4_K_M.gguf": VirtualFile(head, size)})
    for rev in (default_rev, repo.sha):
        assert read_metadata(ModelSource(kind=kind, repo="org/rev-GGUF", revision=rev)).n_layers == 3
    with pytest.raises(RepoNotFound, match="org/rev-GGUF"):
        read_metadata(ModelSource(kind=kind, repo="org/rev-GGUF", revision="no-such-branch"))
