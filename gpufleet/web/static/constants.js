// Choices the API accepts (gpufleet/core/metadata.py CATEGORIES, gpufleet/core/schemas.py
// BackendName, gpufleet/core/placement_spec.py Strategy). tests/unit/test_web_static.py
// checks these lists against the Python ones, so they cannot drift apart.
export const CATEGORIES = ["llm", "embedding", "reranker", "image", "speech-to-text", "text-to-speech"];
export const BACKENDS = ["llama.cpp", "llama-box", "vllm", "vox-box"];
export const STRATEGIES = ["spread", "binpack"];
/** Engines with LMCache's extended KV cache (registry capability kv_cache_extension). */
export const KV_CACHE_BACKENDS = ["vllm"];
