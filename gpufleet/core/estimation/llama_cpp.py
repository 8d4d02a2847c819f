"""llama.cpp (and llama-box) memory per device, from GGUF metadata and llama-server flags.

Terms, in bytes, and where they live (llama.cpp's ``llama-model.cpp`` layer
placement and ``llama-context.cpp`` buffers):

- layers: ``--n-gpu-layers N`` counts the output layer as one more layer, as
  llama.cpp does ("offloaded 33/33 layers" for a 32-block model): the last N
  of blocks 0..n_layer-1 plus the output layer go to the GPUs, the first ones
  stay on the CPU. ``Estimate.total_layers`` is ``n_layer + 1`` for that reason.
- split: offloaded layer k (0-based among them) goes to the first GPU whose
  cumulative ``--tensor-split`` fraction exceeds ``k / n_offloaded``
  (llama.cpp's ``upper_bound``); without a split, in proportion to each GPU's
  memory (llama.cpp uses free memory; placement passes what it may use).
  ``--split-mode none`` puts every offloaded layer on ``--main-gpu``; ``row``
  cuts every offloaded matrix by rows in proportion to the split and keeps the
  KV cache and compute on the main GPU (approximate; noted in the estimate).
- weights: exact bytes per block from the tensor table. The input layer (token
  embedding) always stays on the CPU; the output layer goes with layer n_layer;
  a tied output is a second copy of the embedding on the GPU that holds it.
  On the CPU, some matrices are also repacked into a second buffer ("CPU_REPACK")
  unless ``--no-repack``: per tensor, by type, shape and role
  (:func:`gpufleet.core.model_metadata.repacked`; a tied output on the CPU is
  repacked too: the embedding is not, the output copy is). Models read before
  that was recorded fall back to the share of repackable types in the file.
- KV cache: :mod:`.llama_kv`, on the device of its layer (all on the CPU with
  ``--no-kv-offload``).
- compute: :mod:`.llama_compute` on every device that runs layers; the host
  keeps the graph inputs when everything is offloaded. At partial offload
  llama.cpp also runs the matrix products of CPU layers on the first GPU when the
  micro-batch has >= 32 tokens (``ggml_backend_cuda_device_offload_op``), copying
  the weight into that GPU's compute buffer; every such weight starts a new split so
  "the memory of the previously offloaded weights can be reused"
  (``ggml-backend.cpp``, ``ggml_backend_sched_split_graph``): one tensor at a time,
  the largest one is added to GPU 0's compute (H200, 16 x 2048 F16 at ``-ngl 8``:
  68 MiB full-offload graph + a 32 MiB FFN matrix = 100 MiB vs 88-92 logged; the whole
  largest layer, counted before, was 100 MiB high).
- output: the logits buffer, ``n_vocab x 4 x n_seq`` (+ ``n_embd x 4 x n_ubatch``
  with ``--embedding``), in host memory (pinned when GPUs are used).
- overhead: host ``16 MiB + 192 B x n_vocab`` (server threads, slots, tokenizer tables; measured
  +4.7 MiB RSS at 32k tokens and +22 MiB at 128k). With GPUs the process also holds
  the CUDA runtime, measured on an H200 (:mod:`.cuda_overhead`): per GPU 603-726 MiB
  beyond the logged buffers (CUDA context, llama.cpp's CUDA backend, cuBLAS when
  F16/BF16/F32 matrices or attention without flash attention use it), and on the host
  about 490 MiB of process memory and mapped CUDA libraries. ``Estimate.ram_load_peak``
  is the host's peak while loading (the mapped file read in full, plus 0.3 GiB).
- mmproj: the projector file's weights on ``--main-gpu`` (CPU with
  ``--no-mmproj-offload`` or without GPUs); its image compute buffer is not
  modelled, and the estimate's notes say so.
- encoder-only models (BERT-style embeddings and rerankers): llama.cpp keeps no
  KV cache; attention spans the micro-batch (gpustack#2412 over-estimated a
  bge-reranker 15x by sizing it like a decoder with ctx = batch = ubatch).

Per-model work (prefix sums of layer and KV bytes) is cached by model object,
so a re-estimate under another split is a handful of list lookups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gpufleet.core.estimation import llama_compute as compute
from gpufleet.core.estimation import llama_kv as kv
from gpufleet.core.estimation.cuda_overhead import (
    HOST_CUDA_LIBRARIES,
    HOST_CUDA_PROCESS,
    gpu_overhead,
    load_peak_ram,
    uses_cublas,
)
from gpufleet.core.estimation.llama_params import (
    DEFAULT_CONTEXT,
    EstimateInputError,
    LlamaConfig,
    parse_llama_params,
)
from gpufleet.core.estimation.types import DeviceUsage, Estimate, EstimateOptions
from gpufleet.core.metadata import ModelMetadata

MiB = 1 << 20
HOST_BASE = 16 * MiB  # measured: RSS exceeds the buffers by 6-8 MiB for 3 MB models (server threads, slots)
TOKENIZER_BYTES_PER_TOKEN = 192
#: Host RAM a CUDA process holds beyond a CPU-only one (HOST_BASE is part of the measured 310 MiB).
HOST_GPU_RUNTIME = HOST_CUDA_PROCESS + HOST_CUDA_LIBRARIES - HOST_BASE
REPACKED_TYPES = ("Q4_0", "Q4_K", "IQ4_NL", "MXFP4", "Q2_K")  # fallback only (see model_metadata)
RECURRENT_ARCHS = ("mamba", "mamba2", "rwkv6", "rwkv7", "jamba", "falcon-h1", "granitehybrid", "qwen3next", "lfm2")
OP_OFFLOAD_MIN_BATCH = 32  # llama.cpp offloads CPU-weight ops to a GPU from this batch size


@dataclass
class _Prepared:
    """What one model contributes to every estimate, computed once."""

    n_layers: int
    weight_prefix: list[int]
    max_layer: int
    staged: int  # largest CPU weight staged on GPU 0 at partial offload
    repack_fraction: float  # fallback when the metadata has no per-tensor repack sizes
    repack_prefix: list[int]  # prefix sums of repacked bytes per block (empty: use the fraction)
    cublas: bool  # its matrix products use cuBLAS on CUDA (see cuda_overhead)
    notes: tuple[str, ...]
    kv_prefix: dict[tuple[int, int, str, str], list[int]] = field(default_factory=dict)
    shapes: dict[int, tuple[LlamaConfig, _Shape]] = field(default_factory=dict)


_CACHE: dict[int, tuple[ModelMetadata, _Prepared]] = {}
_CACHE_SIZE = 256


def _prefix(values: list[int]) -> list[int]:
    out, acc = [0], 0
    for v in values:
        acc += v
        out.append(acc)
    return out


def _prepare(meta: ModelMetadata) -> _Prepared:
    hit = _CACHE.get(id(meta))
    if hit is not None and hit[0] is meta:
        return hit[1]
    n = meta.n_layers
    notes: list[str] = []
    layers = list(meta.layer_bytes)
    if len(layers) != n:
        rest = max(meta.tensor_bytes - meta.embedding_bytes - meta.output_bytes - meta.other_bytes, 0)
        layers = [rest // n] * n if n else []
        notes.append("per-layer sizes missing: weights spread evenly over the blocks")
    if meta.mmproj_bytes:
        notes.append("the projector's image compute buffer is not counted (llama.cpp logged 322 MiB for "
                     "Qwen3-VL-4B's at its default warm-up image size, llama.cpp#17300)")
    if 0 in meta.n_kv_heads_per_layer or meta.architecture in RECURRENT_ARCHS:
        notes.append("recurrent layers' state (llama.cpp's RS buffer) is not counted")
    repack = sum(meta.weight_bytes_by_dtype.get(t, 0) for t in REPACKED_TYPES)
    per_tensor = len(meta.repack_layer_bytes) == n
    prep = _Prepared(n, _prefix(layers), max(layers, default=0), meta.max_tensor_bytes or max(layers, default=0),
                     repack / meta.tensor_bytes if meta.tensor_bytes else 0.0,
                     _prefix(meta.repack_layer_bytes) if per_tensor else [],
                     uses_cublas(meta.weight_bytes_by_dtype, meta.tensor_bytes), tuple(notes))
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[id(meta)] = (meta, prep)
    return prep


def context_size(meta: ModelMetadata, cfg: LlamaConfig) -> int:
    """The total context llama.cpp allocates: the user's --ctx-size, else gpufleet's
    min(4096, training context) (see :func:`gpufleet.core.backends.llama_cpp.build_launch`).

    ``--ctx-size 0`` is resolved by llama-server's fit step (``common/fit.cpp:266-276``,
    run before it gives up on a user-set ``-ngl``): the training context for *every*
    stream, n_ctx_train x n_seq without ``--kv-unified`` (one stream of n_ctx_train with
    it). llama.cpp lowers that only when device memory is short; placement reserves it."""
    train = meta.context_length
    if cfg.ctx_size is None:
        return min(DEFAULT_CONTEXT, train) if train > 0 else DEFAULT_CONTEXT
    if cfg.ctx_size == 0:
        full = train if train > 0 else DEFAULT_CONTEXT
        return full if cfg.kv_unified else full * cfg.parallel
    return cfg.ctx_size


def _kv_prefix(meta: ModelMetadata, prep: _Prepared, cells: int, swa_cells: int, cfg: LlamaConfig) -> list[int]:
    key = (cells, swa_cells, cfg.cache_k, cfg.cache_v)
    got = prep.kv_prefix.get(key)
    if got is None:
        if len(prep.kv_prefix) > 64:
            prep.kv_prefix.clear()
        got = prep.kv_prefix[key] = _prefix(kv.kv_bytes_per_layer(meta, cells, swa_cells, cfg.cache_k, cfg.cache_v))
    return got


def split_bounds(n_offloaded: int, split: tuple[float, ...]) -> list[int]:
    """Cumulative offloaded-layer counts per GPU: GPU i holds offloaded layers
    ``bounds[i-1] .. bounds[i]-1``, layer k going to the first GPU whose
    cumulative fraction is greater than k / n_offloaded (llama.cpp's upper_bound)."""
    total = sum(split)
    bounds, acc = [], 0.0
    for s in split:
        acc += s
        frac = acc / total
        b = min(max(math.ceil(frac * n_offloaded), 0), n_offloaded)
        while b > 0 and (b - 1) / n_offloaded >= frac:
            b -= 1
        while b < n_offloaded and b / n_offloaded < frac:
            b += 1
        bounds.append(b)
    if bounds:
        bounds[-1] = n_offloaded
    return bounds


def _split(options: EstimateOptions, cfg: LlamaConfig, whole_layers: bool = True) -> tuple[float, ...]:
    """Proportions per GPU; ``whole_layers`` False gives the row split's proportions."""
    n = len(options.gpu_memory)
    if whole_layers and cfg.split_mode in ("none", "row"):
        main = min(cfg.main_gpu, n - 1)
        return tuple(1.0 if i == main else 0.0 for i in range(n))
    split = options.tensor_split or cfg.tensor_split
    if split:
        split = tuple(split[:n]) + (0.0,) * (n - len(split))
        if sum(split) > 0:
            return split
    return tuple(float(m) for m in options.gpu_memory) if sum(options.gpu_memory) else (1.0,) * n


@dataclass(frozen=True)
class _Shape:
    """Per-configuration quantities shared by all devices (cached per model and flags)."""

    n_ctx: int
    n_ubatch: int
    n_kv: int  # cells one stream's attention sees (full-attention layers)
    kv_prefix: list[int]
    graph: int  # compute buffer of a device running layers
    graph_with_logits: int  # ... and the output layer
    inputs: int  # host compute buffer when every layer is offloaded


def _shape(meta: ModelMetadata, prep: _Prepared, cfg: LlamaConfig) -> _Shape:
    hit = prep.shapes.get(id(cfg))
    if hit is not None and hit[0] is cfg:
        return hit[1]
    n_ctx = context_size(meta, cfg)
    batch = min(cfg.batch, n_ctx)
    n_ubatch = min(cfg.ubatch, batch)
    streams, cells = kv.stream_cells(n_ctx, cfg.parallel, cfg.kv_unified)
    swa = kv.swa_stream_cells(cells, meta.sliding_window, cfg.parallel, cfg.kv_unified, n_ubatch, cfg.swa_full)
    # An encoder attends within the micro-batch only (no cache): n_kv is the micro-batch itself.
    n_kv = n_ubatch if meta.architecture in kv.ENCODER_ONLY else cells
    # A sliding-window model keeps a second KQ mask for its window layers (llama-graph.cpp:3519).
    n_kv_swa = swa if any(meta.swa_layers) and meta.architecture not in kv.ENCODER_ONLY else 0
    shape = _Shape(
        n_ctx, n_ubatch, n_kv, _kv_prefix(meta, prep, streams * cells, streams * swa, cfg),
        compute.graph_bytes(meta, n_ubatch, n_kv, cfg.flash, cfg.parallel, False, n_kv_swa),
        compute.graph_bytes(meta, n_ubatch, n_kv, cfg.flash, cfg.parallel, True, n_kv_swa),
        compute.input_bytes(meta, n_ubatch, n_kv, cfg.flash, n_kv_swa),
    )
    if len(prep.shapes) > 64:
        prep.shapes.clear()
    prep.shapes[id(cfg)] = (cfg, shape)
    return shape


def _output_weights(meta: ModelMetadata, on_gpu: bool) -> int:
    return meta.output_bytes + (meta.embedding_bytes if on_gpu and meta.tied_embeddings else 0)


def _output_buffer(meta: ModelMetadata, cfg: LlamaConfig, n_ubatch: int) -> int:
    """Logits of one output per sequence; embedding models (``--embedding``, or
    an embedding/reranker model) also keep one pooled-input row per token."""
    logits = meta.vocab_size * 4 * cfg.parallel
    embeds = cfg.embedding or meta.category in ("embedding", "reranker")
    return logits + (meta.embedding_length * 4 * n_ubatch if embeds else 0)


def _host_overhead(meta: ModelMetadata, gpus: bool) -> int:
    return HOST_BASE + TOKENIZER_BYTES_PER_TOKEN * meta.vocab_size + (HOST_GPU_RUNTIME if gpus else 0)


def _cpu_only(meta: ModelMetadata, prep: _Prepared, cfg: LlamaConfig, shape: _Shape, backend: str) -> Estimate:
    n = prep.n_layers
    weights = prep.weight_prefix[n] + meta.embedding_bytes + meta.output_bytes + meta.other_bytes
    weights += meta.mmproj_bytes + _repack(meta, prep, cfg, n, True)
    host = DeviceUsage(
        "cpu", layers=n + 1, weights=weights, kv_cache=shape.kv_prefix[n],
        compute=shape.graph_with_logits,
        output=_output_buffer(meta, cfg, shape.n_ubatch), overhead=_host_overhead(meta, False),
    )
    return Estimate(known=True, backend=backend, notes=prep.notes, context_size=shape.n_ctx,
                    total_layers=n + 1, gpu_layers=0, host=host)


def _repack(meta: ModelMetadata, prep: _Prepared, cfg: LlamaConfig, cpu_blocks: int, output_on_cpu: bool) -> int:
    """Bytes of the CPU_REPACK copy of the matrices that run on the CPU."""
    if not cfg.repack:
        return 0
    if prep.repack_prefix:
        return prep.repack_prefix[cpu_blocks] + (meta.repack_output_bytes if output_on_cpu else 0)
    matrices = prep.weight_prefix[cpu_blocks] + (_output_weights(meta, True) if output_on_cpu else 0)
    return int(matrices * prep.repack_fraction)


def _gpu_usage(meta: ModelMetadata, prep: _Prepared, cfg: LlamaConfig, shape: _Shape,
               lo: int, hi: int, index: int) -> DeviceUsage:
    """GPU holding llama.cpp layers lo..hi-1 (layer n_layer is the output layer)."""
    n = prep.n_layers
    a, b = min(lo, n), min(hi, n)
    has_output = lo <= n < hi
    weights = prep.weight_prefix[b] - prep.weight_prefix[a] + (_output_weights(meta, True) if has_output else 0)
    kv_bytes = shape.kv_prefix[b] - shape.kv_prefix[a] if cfg.kv_offload else 0
    work = (shape.graph_with_logits if has_output else shape.graph) if hi > lo else 0
    return DeviceUsage(f"gpu:{index}", layers=hi - lo, weights=weights, kv_cache=kv_bytes,
                       compute=work, overhead=gpu_overhead(prep.cublas, cfg.flash))


def estimate_llama_cpp_split(meta: ModelMetadata, options: EstimateOptions) -> Estimate:
    """Per-device memory of one llama.cpp instance under ``options`` (see module docstring)."""
    backend = options.backend
    try:
        cfg = parse_llama_params(tuple(options.backend_params))
    except EstimateInputError as exc:
        return Estimate.unknown(backend, f"invalid backend parameter: {exc}")
    if meta.n_layers <= 0 or meta.embedding_length <= 0:
        return Estimate.unknown(backend, f"{meta.architecture}: header gives no block count or embedding size")
    prep = _prepare(meta)
    shape = _shape(meta, prep, cfg)
    n = prep.n_layers
    if not options.gpu_memory:
        return _cpu_only(meta, prep, cfg, shape, backend)
    requested = options.gpu_layers if options.gpu_layers is not None else cfg.gpu_layers
    ngl = n + 1 if requested is None else max(0, min(requested, n + 1))
    start = n + 1 - ngl  # first offloaded llama.cpp layer
    bounds = split_bounds(ngl, _split(options, cfg)) if ngl else [0] * len(options.gpu_memory)
    gpus, prev = [], 0
    for i, bound in enumerate(bounds):
        gpus.append(_gpu_usage(meta, prep, cfg, shape, start + prev, start + bound, i))
        prev = bound
    if cfg.split_mode == "row" and len(gpus) > 1:
        gpus = _row_split(gpus, _split(options, cfg, whole_layers=False), min(cfg.main_gpu, len(gpus) - 1))
    gpus = _add_mmproj_and_staging(meta, prep, cfg, shape, gpus, start)
    host = _host_usage(meta, prep, cfg, shape, start)
    notes = prep.notes + (_ROW_NOTE,) if cfg.split_mode == "row" else prep.notes
    # With mmap the whole file is mapped and read while the tensors are uploaded.
    peak = load_peak_ram(host.total, meta.file_size if cfg.mmap else 0)
    return Estimate(known=True, backend=backend, notes=notes, context_size=shape.n_ctx,
                    total_layers=n + 1, gpu_layers=ngl, host=host, gpus=tuple(gpus),
                    claims=tuple(g.total for g in gpus), ram_peak=peak)


_ROW_NOTE = "--split-mode row: matrices split by rows in proportion; KV and compute on --main-gpu (approximate)"


def _row_split(gpus: list[DeviceUsage], split: tuple[float, ...], main: int) -> list[DeviceUsage]:
    """``--split-mode row``: every offloaded matrix is cut by rows across the GPUs in
    proportion to the split, while the KV cache and the graph stay on the main GPU."""
    held = gpus[main]
    total = sum(split)
    out = []
    for i, g in enumerate(gpus):
        weights = int(held.weights * split[i] / total)
        out.append(DeviceUsage(g.device, held.layers, weights, held.kv_cache if i == main else 0,
                               held.compute if i == main else 0, 0, g.overhead))
    return out


def _host_usage(meta: ModelMetadata, prep: _Prepared, cfg: LlamaConfig, shape: _Shape, start: int) -> DeviceUsage:
    n = prep.n_layers
    cpu_blocks = min(start, n)
    output_on_cpu = start > n
    cpu_matrices = prep.weight_prefix[cpu_blocks] + (meta.output_bytes if output_on_cpu else 0)
    weights = cpu_matrices + meta.embedding_bytes + meta.other_bytes + _repack(meta, prep, cfg, cpu_blocks, output_on_cpu)
    if not cfg.mmproj_offload:
        weights += meta.mmproj_bytes
    kv_bytes = shape.kv_prefix[cpu_blocks] if cfg.kv_offload else shape.kv_prefix[n]
    if start > 0 or not cfg.kv_offload:
        work = shape.graph_with_logits if output_on_cpu else shape.graph
    else:
        work = shape.inputs
    return DeviceUsage("cpu", layers=start, weights=weights, kv_cache=kv_bytes, compute=work,
                       output=_output_buffer(meta, cfg, shape.n_ubatch), overhead=_host_overhead(meta, True))


def _add_mmproj_and_staging(meta: ModelMetadata, prep: _Prepared, cfg: LlamaConfig, shape: _Shape,
                            gpus: list[DeviceUsage], start: int) -> list[DeviceUsage]:
    """The projector goes to the main GPU; CPU-layer weights are staged on GPU 0 at partial offload."""
    if meta.mmproj_bytes and cfg.mmproj_offload:
        main = min(cfg.main_gpu, len(gpus) - 1)
        g = gpus[main]
        gpus[main] = DeviceUsage(g.device, g.layers, g.weights + meta.mmproj_bytes, g.kv_cache, g.compute,
                                 g.output, g.overhead)
    if start > 0 and shape.n_ubatch >= OP_OFFLOAD_MIN_BATCH and any(g.layers for g in gpus):
        g = gpus[0]
        staged = max(prep.staged, meta.output_bytes if start > prep.n_layers else 0)  # output matrix on the CPU
        gpus[0] = DeviceUsage(g.device, g.layers, g.weights, g.kv_cache, g.compute + staged,
                              g.output, g.overhead)
    return gpus

