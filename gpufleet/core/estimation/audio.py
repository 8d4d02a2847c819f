"""vox-box (speech-to-text and text-to-speech) memory, from weight size alone.

Audio models have no KV cache worth modelling and no header gpufleet parses
beyond the weights, so the estimate is a documented heuristic, the one GPUStack
uses for these models (``gpustack/policies/utils.py`` ``estimate_model_vram``):

- speech-to-text (Whisper-style): ``weights x 1.2 + 512 MiB``: the 1.2 covers
  encoder activations for a 30 s window and the decoder's cache; 512 MiB is the
  framework (torch/CTranslate2 + CUDA context).
- text-to-speech: ``weights x 3 + 512 MiB``: vocoders and diffusion-style
  decoders keep several activation copies of the weights' size.

On the CPU the same total is host RAM. This is not checked against a
measurement on this machine (no audio runtime is installed); the estimate
says so in its notes.
"""

from __future__ import annotations

from gpufleet.core.estimation.types import DeviceUsage, Estimate, EstimateOptions
from gpufleet.core.metadata import ModelMetadata

MiB = 1 << 20
FRAMEWORK_OVERHEAD = 512 * MiB
ACTIVATION_FACTOR = {"speech-to-text": 1.2, "text-to-speech": 3.0}
NOTE = "audio estimate is GPUStack's heuristic (weights x factor + 512 MiB), not measured"


def estimate_audio(meta: ModelMetadata, options: EstimateOptions) -> Estimate:
    backend = options.backend
    factor = ACTIVATION_FACTOR.get(meta.category)
    if factor is None:
        return Estimate.unknown(backend, f"vox-box serves speech models; {meta.category} is not one")
    weights = meta.tensor_bytes or meta.file_size
    if weights <= 0:
        return Estimate.unknown(backend, "the model's weight size is unknown")
    work = int(weights * (factor - 1))
    if not options.gpu_memory:
        host = DeviceUsage("cpu", weights=weights, compute=work, overhead=FRAMEWORK_OVERHEAD)
        return Estimate(known=True, backend=backend, notes=(NOTE,), host=host)
    gpu = DeviceUsage("gpu:0", weights=weights, compute=work, overhead=FRAMEWORK_OVERHEAD)
    return Estimate(known=True, backend=backend, notes=(NOTE,), host=DeviceUsage("cpu", overhead=FRAMEWORK_OVERHEAD),
                    gpus=(gpu,) + tuple(DeviceUsage(f"gpu:{i}") for i in range(1, len(options.gpu_memory))),
                    claims=(gpu.total,) + (0,) * (len(options.gpu_memory) - 1))
