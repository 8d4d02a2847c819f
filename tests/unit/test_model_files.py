"""Grouping GGUF files by quantization, shards, projectors, default choice and globs."""

from __future__ import annotations

import pytest

from gpufleet.core.model_files import (
    FileChoiceError,
    RepoFile,
    choose_gguf,
    choose_mmproj,
    group_files,
    quantization_of,
    safetensors_weights,
)

GiB = 1 << 30


@pytest.mark.parametrize(
    "name, quant",
    [
        ("Meta-Llama-3-8B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("qwen2.5-7b-instruct-q8_0.gguf", "Q8_0"),
        ("Qwen3-8B-BF16.gguf", "BF16"),
        ("model.IQ2_XS.gguf", "IQ2_XS"),
        ("Q4_K_M/Llama-70B-Q4_K_M-00002-of-00003.gguf", "Q4_K_M"),
        ("gpt-oss-20b-MXFP4.gguf", "MXFP4"),
        ("DeepSeek-R1-UD-Q4_K_XL-00001-of-00008.gguf", "UD-Q4_K_XL"),
        ("tiny-f16.gguf", "F16"),
        ("ggml-model.gguf", "unknown"),  # nothing that looks like a quantization
        ("Qwen3-0.6B.gguf", "unknown"),  # "Qwen3" is not Q3
    ],
)
def test_quantization_label(name: str, quant: str) -> None:
    assert quantization_of(name) == quant


LISTING = [
    RepoFile("README.md", 10),
    RepoFile("m-Q8_0.gguf", 8 * GiB),
    RepoFile("m-Q4_K_M-00001-of-00003.gguf", 2 * GiB),
    RepoFile("m-Q4_K_M-00002-of-00003.gguf", 2 * GiB),
    RepoFile("m-Q4_K_M-00003-of-00003.gguf", 1 * GiB),
    RepoFile("m-F16.gguf", 16 * GiB),
    RepoFile("mmproj-m-F16.gguf", GiB // 2),
    RepoFile("mmproj-m-F32.gguf", GiB),
]


def test_groups_one_row_per_quantization_with_total_shard_size() -> None:
    listing = group_files(LISTING)
    rows = {(g.quantization, len(g.files), g.size // GiB) for g in listing.gguf}
    # Q4_K_M: 2 + 2 + 1 = 5 GiB in 3 shards
    assert rows == {("Q4_K_M", 3, 5), ("Q8_0", 1, 8), ("F16", 1, 16)}
    assert {g.quantization for g in listing.mmproj} == {"F16", "F32"}
    assert [f.path for f in listing.other] == ["README.md"]


def test_default_is_q4_k_m_and_says_so() -> None:
    group, why = choose_gguf(group_files(LISTING), None)
    assert group.quantization == "Q4_K_M" and len(group.files) == 3
    assert "Q4_K_M" in why and "--file" in why


def test_default_without_preferred_quant_is_smallest() -> None:
    files = [RepoFile("a-unknownquant.gguf", 5), RepoFile("b.gguf", 3)]
    group, _ = choose_gguf(group_files(files), None)
    assert group.first.path == "b.gguf"


@pytest.mark.parametrize(
    "pattern, first, note",
    [
        ("*Q8_0*.gguf", "m-Q8_0.gguf", "'*Q8_0*.gguf' selects m-Q8_0.gguf"),
        ("m-F16.gguf", "m-F16.gguf", ""),  # exactly the file named: nothing to explain
        # a shard selects the whole model, and says so
        ("*Q4_K_M-00002-of-00003.gguf", "m-Q4_K_M-00001-of-00003.gguf",
         "'*Q4_K_M-00002-of-00003.gguf' selects m-Q4_K_M-00001-of-00003.gguf"),
    ],
)
def test_glob_and_exact_names(pattern: str, first: str, note: str) -> None:
    group, why = choose_gguf(group_files(LISTING), pattern)
    assert group.first.path == first
    assert why == note


@pytest.mark.parametrize(
    "pattern, message",
    [("*Q2_K*", "no GGUF file matches"), ("m-*.gguf", "matches 3 models")],
)
def test_bad_patterns_list_what_exists(pattern: str, message: str) -> None:
    with pytest.raises(FileChoiceError, match=message):
        choose_gguf(group_files(LISTING), pattern)


def test_incomplete_split_model_is_refused() -> None:
    files = [RepoFile("x-Q4_K_M-00001-of-00002.gguf", 1)]
    with pytest.raises(FileChoiceError, match="split into 2 shards but the repository holds 1"):
        choose_gguf(group_files(files), None)


def test_mmproj_alone_is_not_a_model_and_f16_projector_preferred() -> None:
    with pytest.raises(FileChoiceError, match="mmproj"):
        choose_gguf(group_files([RepoFile("mmproj-F16.gguf", 1)]), None)
    proj = choose_mmproj(group_files(LISTING))
    assert proj is not None and proj.first.path == "mmproj-m-F16.gguf"


def test_safetensors_weights_from_index_or_top_level() -> None:
    listing = group_files([
        RepoFile("model-00001-of-00002.safetensors", 5), RepoFile("model-00002-of-00002.safetensors", 3),
        RepoFile("original/consolidated.safetensors", 8),
    ])
    assert [f.path for f in safetensors_weights(listing, None)] == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
    ]
    with pytest.raises(FileChoiceError, match="not in the repository"):
        safetensors_weights(listing, ["model-00003.safetensors"])
