"""Deploy-time refusal of backend flags an engine does not take (pure)."""

from __future__ import annotations

import pytest

from gpufleet.core.backends.flags import UnknownFlag, check_known_flags, parse_help_flags
from gpufleet.core.backends.params import parse_params

#: excerpts of the real help texts (llama.cpp b11434 `llama-server --help`, vLLM's API server `--help`)
LLAMA_HELP = """\
-c,    --ctx-size N                     size of the prompt context (default: 0, 0 = loaded from model)
                                        (env: LLAMA_ARG_CTX_SIZE)
-ngl,  --gpu-layers, --n-gpu-layers N   max. number of layers to store in VRAM (default: -1)
-fa,   --flash-attn [on|off|auto]       set Flash Attention use ('on', 'off', or 'auto', default: 'auto')
--no-mmap                               do not memory-map model (slower load but may reduce pageouts)
-ts,   --tensor-split N0,N1,N2,...      fraction of the model to offload to each GPU, comma-separated list
"""
VLLM_HELP = """\
  --max-model-len MAX_MODEL_LEN, --max_model_len MAX_MODEL_LEN
                        Model context length. Supports k/m/g/K/M/G in human-readable format.
  --enforce-eager, --no-enforce-eager
  --gpu-memory-utilization GPU_MEMORY_UTILIZATION
"""


@pytest.mark.parametrize(
    ("help_text", "present", "absent"),
    [
        (LLAMA_HELP, {"-c", "--ctx-size", "-ngl", "--gpu-layers", "--n-gpu-layers", "--no-mmap", "-ts", "-fa"},
         {"-1", "--"}),  # "-1" in "(default: -1)" is a value, not a flag
        (VLLM_HELP, {"--max-model-len", "--max_model_len", "--enforce-eager", "--no-enforce-eager",
                     "--gpu-memory-utilization"}, {"k/m/g"}),
    ],
)
def test_flags_are_read_from_help(help_text: str, present: set[str], absent: set[str]) -> None:
    flags = set(parse_help_flags(help_text))
    assert present <= flags
    assert not (absent & flags)


@pytest.mark.parametrize(
    ("params", "refused", "hint"),
    [
        (["--ctx-size=512", "-ngl 10", "--no-mmap"], None, None),  # all listed
        (["--ctx-sise=512"], "--ctx-sise", "--ctx-size"),           # a typo: the close match is named
        (["--no-such-flag"], "--no-such-flag", None),
    ],
)
def test_unknown_flags_are_refused_with_close_matches(params: list[str], refused: str | None, hint: str | None) -> None:
    known = parse_help_flags(LLAMA_HELP)
    if refused is None:
        check_known_flags(parse_params(params, {}), known, "llama.cpp", "b11434")
        return
    with pytest.raises(UnknownFlag) as err:
        check_known_flags(parse_params(params, {}), known, "llama.cpp", "b11434")
    assert f"{refused} is not a llama.cpp b11434 flag" in str(err.value)
    assert (hint in str(err.value)) if hint else "did you mean" not in str(err.value)


def test_an_engine_that_reported_no_flags_is_not_checked() -> None:
    check_known_flags(parse_params(["--anything"], {}), [], "vllm", "0.32.0")
