"""A tiny random-weight Whisper in faster-whisper's format, which a real vox-box serves on CPU.

vox-box serves speech-to-text with faster-whisper (CTranslate2) when a local model directory
holds ``model.bin`` and ``tokenizer.json`` and its ``preprocessor_config.json`` names
``"processor_class": "WhisperProcessor"`` (``vox_box/estimator/faster_whisper.py``). So the
model is written the way such repositories are made: a ``WhisperForConditionalGeneration``
saved with ``transformers``, then converted with CTranslate2's ``TransformersConverter`` (the
``ct2-transformers-converter`` tool), the tokenizer and preprocessor files copied alongside.

gpufleet's project environment has neither torch nor transformers; both are in vox-box's own
environment (vox-box depends on transformers, ctranslate2 and faster-whisper), so the model is
written by *that* environment's interpreter running this file as a script
(`<env>/bin/python tests/support/voxbox_models.py stt DEST`). The host-side functions import
the standard library only.

- tokenizer: built in code, nothing downloaded: 256 byte-level tokens first (so every text id
  lies below ``<|endoftext|>``, which faster-whisper's decoder requires), then Whisper's special
  tokens and the 1501 timestamp tokens. The vocabulary is far below 51865, so CTranslate2
  treats the model as English-only: no language detection, no language/task tokens.
- model: 2 encoder + 2 decoder layers, d_model 64, 2 heads, 80 mel bins, 1500 source positions
  (faster-whisper always feeds 30-s windows), weights from a fixed seed, so the same files come
  out on every run (``model.bin`` is byte-identical). The transcription of any sound is
  random text; the HTTP answer is what the tests check.
- :func:`write_tone_wav`: a 16 kHz mono 16-bit WAV of a sine tone, written with ``wave``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

SEED = 0
D_MODEL = 64
LAYERS = 2
HEADS = 2
MEL_BINS = 80
SOURCE_POSITIONS = 1500  # 30 s of audio: 3000 mel frames, halved by the encoder's second conv
TARGET_POSITIONS = 448
WRITE_TIMEOUT_S = 600  # a cold first import of torch + transformers + ctranslate2 on 2 cores: ~1 min

#: Whisper's special tokens in Whisper's order (English-only model: no language tokens).
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
            "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
TIMESTAMPS = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
#: The files vox-box's faster-whisper estimator and faster-whisper itself read.
MODEL_FILES = ("model.bin", "config.json", "vocabulary.json", "tokenizer.json", "preprocessor_config.json")


def write_tiny_whisper(python: Path, dest: Path) -> Path:
    """The tiny faster-whisper model under ``dest``, written by vox-box's environment's ``python``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"  # everything is built in code; a download attempt is a bug
    env["TRANSFORMERS_OFFLINE"] = "1"
    result = subprocess.run([str(python), str(Path(__file__).resolve()), "stt", str(dest)], capture_output=True,
                            text=True, env=env, stdin=subprocess.DEVNULL, timeout=WRITE_TIMEOUT_S)
    if result.returncode != 0 or not all((dest / name).is_file() for name in MODEL_FILES):
        raise RuntimeError(f"writing the tiny Whisper with {python} failed (exit {result.returncode}):\n"
                           + "\n".join((result.stdout + result.stderr).splitlines()[-30:]))
    return dest


def write_tone_wav(path: Path, seconds: float = 1.0, hz: float = 440.0, rate: int = 16000) -> Path:
    """A mono 16-bit PCM WAV of a sine tone (standard library only)."""
    frames = b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * hz * i / rate)))
                      for i in range(int(seconds * rate)))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return path


# ---- run inside vox-box's environment -----------------------------------------------------------

def _tokenizer():  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate([*alphabet, *SPECIALS, *TIMESTAMPS])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([*SPECIALS, *TIMESTAMPS])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   model_max_length=TARGET_POSITIONS)


def _write_stt(dest: Path) -> None:
    import torch
    from ctranslate2.converters import TransformersConverter
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(SEED)
    tok = _tokenizer()
    ids = {token: tok.convert_tokens_to_ids(token) for token in SPECIALS}
    eot, sot, no_ts = ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|notimestamps|>"]
    config = WhisperConfig(
        vocab_size=len(tok), num_mel_bins=MEL_BINS, d_model=D_MODEL, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=2 * D_MODEL,
        decoder_ffn_dim=2 * D_MODEL, max_source_positions=SOURCE_POSITIONS, max_target_positions=TARGET_POSITIONS,
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, decoder_start_token_id=sot,
    )
    model = WhisperForConditionalGeneration(config).to(torch.float32).eval()
    with torch.no_grad():
        # The output projection is tied to the token embeddings. Zeroing the rows of the specials
        # after <|endoftext|> and of the timestamps makes their logits 0, below the best of the
        # 257 random text/end logits, so greedy decoding emits bytes (text) until <|endoftext|>:
        # a non-empty transcription instead of timestamps that the decoder drops.
        model.model.decoder.embed_tokens.weight[eot + 1:] = 0.0
    gen = model.generation_config
    gen.no_timestamps_token_id = no_ts
    gen.suppress_tokens, gen.begin_suppress_tokens = [], [eot]
    gen.alignment_heads = [[LAYERS - 1, h] for h in range(HEADS)]

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tiny-whisper-hf-") as tmp:
        hf = Path(tmp)
        model.save_pretrained(hf, safe_serialization=True)
        tok.save_pretrained(hf)
        WhisperFeatureExtractor(feature_size=MEL_BINS).save_pretrained(hf)
        preprocessor = json.loads((hf / "preprocessor_config.json").read_text())
        preprocessor["processor_class"] = "WhisperProcessor"  # what vox-box's estimator looks for
        (hf / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2, sort_keys=True) + "\n")
        out = dest / "ct2"
        TransformersConverter(str(hf), copy_files=["tokenizer.json", "preprocessor_config.json"],
                              low_cpu_mem_usage=False).convert(str(out), force=True)
        for item in out.iterdir():
            os.replace(item, dest / item.name)
        out.rmdir()
    for name in MODEL_FILES:
        if not (dest / name).is_file():
            raise RuntimeError(f"the conversion wrote no {name} in {dest}")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "stt":
        print("usage: voxbox_models.py stt DEST", file=sys.stderr)
        return 2
    dest = Path(argv[1])
    if dest.exists():
        shutil.rmtree(dest)
    _write_stt(dest)
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
