"""Every difference between the transformers releases we support, in one place, and the guard that refuses a
release we never tested.

Supported: `TESTED_RELEASES` (the range `pyproject.toml` admits). To add a release: run the whole suite on it
(`scripts/test.sh` with it installed, `shared/transformers-tests`), adapt what differs here, then raise the bound
in `pyproject.toml` and `TESTED_RELEASES` together. The other modules ask this one; none compares versions.
"""

import os
import warnings

import torch
import transformers
from packaging.version import Version
from transformers.cache_utils import LinearAttentionCacheLayerMixin

# (lowest, first excluded) minor releases: the range `transformers>=5.24,<5.26` in pyproject.toml.
TESTED_RELEASES = ("5.24", "5.26")
ALLOW_UNTESTED_ENV = "HF_HYBRID_CACHE_ALLOW_UNTESTED_TRANSFORMERS"
INSTALLED = Version(transformers.__version__)

# 5.25: linear-attention cache layers count their tokens (`cumulative_length_linear`, 0-d tensor), and
# `Cache.get_seq_length()` reads it from layer 0 (a linear layer on most hybrids) instead of redirecting to the
# first attention layer. 5.24 layers have no count: positions come from the attention layers.
COUNTS_LINEAR_TOKENS = hasattr(LinearAttentionCacheLayerMixin, "increase_count")

# 5.25: `transformers serve` runs each model in a spawned process of its own (`cli/serving/model_manager.py`
# `EngineClient`); 5.24 ran it in the server's process (`CBGenerateManager` in `cli/serving/utils.py`).
SERVES_IN_MODEL_PROCESS = INSTALLED >= Version("5.25.0.dev0")

# 5.25: continuous batching converts `num_blocks` to bytes with the allocators it built (our grouping: the
# attention layers only); 5.24 counted every layer of the model as full attention.
CB_BLOCKS_COUNT_ALLOCATED_LAYERS = SERVES_IN_MODEL_PROCESS

# 5.25: generate runs assisted decoding (prompt lookup, assistant models, MTP) on stateful models, calling
# `activate_past_recording(recurrent_states_to_keep=...)` and `crop(-n)` on the cache; 5.24 refused it.
ASSISTS_STATEFUL_MODELS = SERVES_IN_MODEL_PROCESS

_warned_untested = False


def untested_release(version: Version | None = None) -> bool:
    """True for a release outside `TESTED_RELEASES`, and for any dev or pre-release build (even of a tested minor:
    it is not the release the suite ran on)."""
    version = INSTALLED if version is None else version
    low, high = (Version(v) for v in TESTED_RELEASES)
    if version.is_devrelease or version.is_prerelease:
        return True
    return not low <= Version(version.base_version) < high


def check_release(allow_untested: bool | None = None) -> None:
    """Refuse to patch on a transformers release we never tested (we patch its internals: any minor release can
    break us silently). `allow_untested` (or the environment variable `ALLOW_UNTESTED_ENV=1`) opts in, with one
    warning per process.

    Raises:
        RuntimeError: naming the installed release, the tested range and the opt-in.
    """
    global _warned_untested
    version = INSTALLED
    if not untested_release(version):
        return
    if allow_untested is None:
        allow_untested = os.environ.get(ALLOW_UNTESTED_ENV, "") not in ("", "0")
    low, high = TESTED_RELEASES
    message = (
        f"hf_hybrid_cache was tested with transformers>={low},<{high}; transformers {version} is installed. "
        f"Install a tested release (pip install 'transformers>={low},<{high}')"
    )
    if not allow_untested:
        raise RuntimeError(
            f"{message}, or opt in at your own risk with hf_hybrid_cache.patch(model, allow_untested_transformers=True) "
            f"or {ALLOW_UNTESTED_ENV}=1 (then check your model with `python -m hf_hybrid_cache.check MODEL`)."
        )
    if not _warned_untested:
        _warned_untested = True
        warnings.warn(f"{message}. Running on it because you opted in: check outputs with `python -m hf_hybrid_cache.check`.",
                      stacklevel=3)


def set_token_count(layer, num_tokens: int) -> None:
    """A linear-attention cache layer, initialized, restored to hold `num_tokens` tokens (5.25 counts them)."""
    if COUNTS_LINEAR_TOKENS and isinstance(layer, LinearAttentionCacheLayerMixin):
        layer.cumulative_length_linear.fill_(num_tokens)


def count_unseen_tokens(cache, layer_idx: int, num_tokens: int) -> None:
    """Tokens a one-pass layer ran without handing them to the cache's `update_conv_state` (5.25 counts a step
    there): a one-token step whose conv state a kernel updated in place (as 5.25's own `increase_count` path), or
    the part of a longer step before the last `conv_kernel_size` inputs, which the cache does not keep."""
    if COUNTS_LINEAR_TOKENS and num_tokens:
        cache.layers[layer_idx].cumulative_length_linear.add_(num_tokens)


# transformers 5.25 pages latent attention (MLA: DeepSeek-style, Kimi-Linear's) as one row per token holding the
# compressed K/V latent and the rotated key; 5.24's engine pages it as plain K/V heads and fails on its first forward.
CB_PAGES_LATENT_ATTENTION = SERVES_IN_MODEL_PROCESS


def is_latent_attention(text_config) -> bool:
    return getattr(text_config, "kv_lora_rank", None) is not None


def cb_page_bytes_per_token(text_config, dtype: torch.dtype) -> int:
    """Bytes one token takes in one attention layer's page of transformers' continuous batching: K and V heads, or
    (MLA) the latent row."""
    from transformers.generation.continuous_batching.cache_allocators import FullAttentionCacheAllocator
    from transformers.generation.continuous_batching.utils import find_head_dim, find_num_key_value_heads

    if is_latent_attention(text_config):
        return (text_config.kv_lora_rank + text_config.qk_rope_head_dim) * dtype.itemsize
    return FullAttentionCacheAllocator.get_bytes_per_page(
        find_num_key_value_heads(text_config), find_head_dim(text_config), dtype, 1
    )


def cb_latent_page(allocator, layer_idx: int, block_id: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """An MLA layer's page of block `block_id` as (latents `[page_size, 1, kv_lora_rank]`, rotated keys `[page_size, 1,
    qk_rope_head_dim]`), views, laid out as `generate()`'s cache holds them; None for another allocator."""
    views = getattr(allocator, "_latent_token_views", None)  # 5.25's MLACacheAllocator
    if views is None:
        return None
    latents, rotated_keys = views[layer_idx]
    start = block_id * allocator.block_physical_stride
    rows = slice(start, start + allocator.tokens_per_page)
    return latents[rows].unsqueeze(1), rotated_keys[rows].unsqueeze(1)


def cb_bytes_per_block(text_config, dtype: torch.dtype, page_size: int, num_attention_layers: int) -> int:
    """The bytes transformers' continuous batching counts per block of `num_blocks`, for a config whose
    `num_attention_layers` layers our grouping (`continuous/engine.py`) gives to the attention allocators (see
    above)."""
    page = cb_page_bytes_per_token(text_config, dtype) * page_size
    if CB_BLOCKS_COUNT_ALLOCATED_LAYERS:
        return page * num_attention_layers
    return page * text_config.num_hidden_layers
