"""The xllamacpp launcher maps llama-server's memory flags onto llama.cpp's own
parameters (what the estimator assumed is what runs), and refuses the rest."""

from __future__ import annotations

import pytest

from gpufleet.runtimes import xllamacpp_launcher as launcher


def params(*argv: str):  # noqa: ANN201 - xllamacpp.CommonParams
    return launcher.to_params(launcher.build_parser().parse_args(["--model", "m.gguf", *argv]))


def test_memory_flags_reach_llama_cpp() -> None:
    p = params("-ts", "3,1", "--main-gpu", "1", "-ctk", "q8_0", "--cache-type-v", "q4_0",
               "--flash-attn", "off", "--no-kv-offload", "--kv-unified", "--swa-full", "-np", "2")
    assert list(p.tensor_split[:3]) == [3.0, 1.0, 0.0] and len(p.tensor_split) == launcher.MAX_DEVICES
    assert p.main_gpu == 1
    assert (p.cache_type_k, p.cache_type_v) == (8, 2)  # ggml type ids of q8_0 and q4_0
    assert p.flash_attn_type == 0
    assert (p.no_kv_offload, p.kv_unified, p.swa_full, p.n_parallel) == (True, True, True, 2)


def test_defaults_leave_llama_cpp_defaults() -> None:
    p = params()
    assert (p.cache_type_k, p.flash_attn_type, p.no_kv_offload, p.kv_unified) == (1, -1, False, False)
    assert params("--flash-attn").flash_attn_type == 1  # bare flag = on, as older llama-server


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tensor-split", "a,b"], "--tensor-split takes numbers"),
        (["--cache-type-k", "q9"], "invalid choice: 'q9'"),
        (["--rope-scaling", "yarn"], "unrecognized arguments: --rope-scaling"),
    ],
)
def test_bad_flags_exit_2_with_the_supported_list(argv: list[str], message: str, capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as exc:
        launcher.build_parser().parse_args(["--model", "m.gguf", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == launcher.EXIT_USAGE
    assert message in err and "supported flags:" in err and "--tensor-split" in err
