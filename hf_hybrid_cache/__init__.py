"""Prefix caching for hybrid models (Qwen3.5, Qwen3-Next, Nemotron-H, LFM2, ...) and plain attention models in
Hugging Face transformers.

    import hf_hybrid_cache as hhc
    hhc.patch(model)
    cache = hhc.HybridPrefixCache(model)            # shares the process-wide PrefixStore
    model.generate(input_ids, cache=cache, max_new_tokens=32)
    cache.num_cached_tokens                          # prompt tokens served from the store

    hhc.patch(model, auto=True)                      # or: every generate() without a cache uses one
    model.generate(input_ids, max_new_tokens=32)
    hhc.cached_tokens(input_ids)

    hhc.score(model, [token_ids], logits_from=[context_len - 1])   # logits of a continuation, prefix served

    model.generate_batch(prompts, continuous_batching_config=hhc.HybridBatchingConfig(max_bytes=1 << 30))
                                                     # transformers' continuous batching, on the same store
"""

from .cache import HybridPrefixCache
from .integrations.auto import cached_tokens
from .patching import patch
from .scoring import score
from .store import PrefixStore, get_default_store, set_default_store

__all__ = [
    "HybridBatchingConfig", "HybridPrefixCache", "PrefixStore", "cached_tokens", "get_default_store", "patch", "score",
    "set_default_store",
]


def __getattr__(name: str):
    # Imported on first use: it loads transformers' continuous batching engine (about a second).
    if name == "HybridBatchingConfig":
        from .continuous.engine import HybridBatchingConfig

        return HybridBatchingConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
