"""Continuous batching for hybrid models inside transformers' own engine: its scheduler, allocators, packing
and serving run unchanged; the recurrent layers get state slots (`paged_cache.py`) and packed
variable-length kernels (`models/gated_delta_net.py`, `models/short_conv.py`), and prefix caching runs on
the `PrefixStore` that `generate()` uses (`store_link.py`).

Seams into `transformers.generation.continuous_batching`, checked with transformers 5.24.0 and 5.25.0 (what
differs between them is in `seams.py`):
- `cache.group_layers_by_attn_type` and `initialization.group_layers_by_attn_type` group layers by type, one
  allocator each, and raise `Invalid layer type: linear_attention` (or `conv`). For the text config of a model
  `init_continuous_batching` was called on here, the recurrent and feed-forward-only layers are left out of the
  groups, and "hybrid" layers (attention beside a Mamba2 mixer) join the full-attention group.
- `continuous_api.PagedAttentionCache`, built by `ContinuousBatchingManager._create_batch_processor`: for
  such a config, `HybridPagedAttentionCache` with its slots and store; any other config gets
  transformers' class as before.
- `AttentionInterface`'s "sdpa" (transformers' attention for continuous batching on CPU): packs every request
  into one row with a block-diagonal mask, repeating the K/V heads of all requests' keys for grouped-query
  attention (a fifth of a decode step's time at 8 requests of a tiny Qwen3-Next here). In our batches on
  CPU, SDPA reads the K/V heads as they are (`enable_gqa`); any other call runs transformers' function.
- `model.init_continuous_batching`, which `generate_batch`, `continuous_batching_context_manager` and
  serving's `CBGenerateManager` all go through: wrapped by `patch()` to size and register the model first.
"""

import copy
import math
import weakref
from dataclasses import dataclass

import torch
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching import cache as cb_cache
from transformers.generation.continuous_batching import continuous_api, initialization
from transformers.modeling_utils import AttentionInterface

from .. import seams
from ..integrations.auto import store_of
from ..store.prefix_store import PrefixStore, get_default_store
from .paged_cache import PACKED_BATCH, HybridPagedAttentionCache
from .state_slots import LinearLayerSpec, StateSlots, linear_layer_specs
from .store_link import StoreLink

RECURRENT_LAYER_TYPES = ("linear_attention", "conv")  # GatedDeltaNets, Mamba2 mixers, LFM2's short convs
# The attention type of each layer type with K/V; "hybrid": Falcon-H1's and Zamba2's layers, attention beside a
# Mamba2 mixer (a K/V block and a state slot).
ATTENTION_OF = {"full_attention": "full_attention", "sliding_attention": "sliding_attention", "hybrid": "full_attention"}
CACHELESS_LAYER_TYPES = ("mlp", "moe")  # Nemotron-H's feed-forward layers
DEFAULT_CPU_MAX_BYTES = 256 << 20
DEFAULT_CPU_MAX_BATCH_TOKENS = 256
DEFAULT_MAX_REQUESTS = 16


@dataclass
class HybridBatchingConfig(ContinuousBatchingConfig):
    """transformers' `ContinuousBatchingConfig` with what a hybrid model keeps beside the paged K/V; pass it as
    `continuous_batching_config` to `generate_batch` / `init_continuous_batching` (a plain one gets these
    defaults).

    Attributes:
        max_bytes: the byte budget of paged K/V, state slots and the attention masks transformers sizes from
            its token counts. None: 256 MiB on CPU; on GPU, transformers sizes the K/V from free memory after
            the slots are allocated. The store's pages and snapshots are within the store's own `max_bytes`.
        max_requests: requests running at once (one state slot each); also caps `max_requests_per_batch`.
        store: the `PrefixStore` prefix caching reads and writes, the one `generate()` uses too (its
            `block_size` is the page size, its `mamba_cache_mode` says which boundaries save states, and its
            policy evicts them). None: the store the model's auto mode uses, else the process-wide one.
        namespace: as `HybridPrefixCache`'s: entries of one namespace never hit from another.
        page_size: None (default): the store's block size; any other value must equal it. A plain
            `ContinuousBatchingConfig`'s page size at transformers' default counts as None.
    """

    max_bytes: int | None = None
    max_requests: int = DEFAULT_MAX_REQUESTS
    store: PrefixStore | None = None
    namespace: str | None = None
    page_size: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")
        if self.max_requests < 1:
            raise ValueError(f"max_requests must be at least 1, got {self.max_requests}")
        if self.store is not None and not isinstance(self.store, PrefixStore):
            raise TypeError(f"store must be a PrefixStore or None, got {type(self.store).__name__}")
        if self.namespace is not None and not isinstance(self.namespace, str):
            raise TypeError(f"namespace must be a str or None, got {type(self.namespace).__name__}")

    def __deepcopy__(self, memo):
        """transformers copies its config: the copy shares the store (one store is the point of it)."""
        fields = {name: copy.deepcopy(getattr(self, name), memo) for name in self.__dataclass_fields__ if name != "store"}
        copied = object.__new__(type(self))
        copied.__dict__.update(self.__dict__, **fields)
        return copied


class RequestTooLongError(ValueError):
    """A request needs more cached tokens than the whole continuous batching cache holds."""


@dataclass
class _Registered:
    config_ref: weakref.ref
    specs: dict[int, LinearLayerSpec]
    num_slots: int
    link: StoreLink
    max_tokens: int | None  # K/V capacity in tokens, when sized from a budget


_REGISTRY: dict[int, _Registered] = {}  # id(text config) -> what its cache needs


def _registered(config) -> _Registered | None:
    entry = _REGISTRY.get(id(config))
    return entry if entry is not None and entry.config_ref() is config else None


def _group_layers(original):
    def group_layers_by_attn_type(config):
        if _registered(config) is None:
            return original(config)
        groups = {}
        for index, layer_type in enumerate(config.layer_types):
            if layer_type in ATTENTION_OF:
                groups.setdefault(ATTENTION_OF[layer_type], []).append(index)
        return groups

    group_layers_by_attn_type.hf_hybrid_cache = True
    return group_layers_by_attn_type


def _paged_cache(original):
    def paged_attention_cache(config, continuous_batching_config, *args, **kwargs):
        entry = _registered(config)
        if entry is None:
            return original(config, continuous_batching_config, *args, **kwargs)
        return HybridPagedAttentionCache(
            config, continuous_batching_config, *args, slots=StateSlots(entry.specs, entry.num_slots),
            link=entry.link, **kwargs,
        )

    paged_attention_cache.hf_hybrid_cache = True
    return paged_attention_cache


def _sdpa_packed_gqa(original):
    def sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
        """query `[1, heads, Q, head_dim]`, key / value `[1, kv_heads, K, head_dim]`, attention_mask
        `[1, 1, Q, K]` -> `[1, Q, heads, head_dim]`."""
        if not (kwargs.get(PACKED_BATCH) and query.device.type == "cpu" and attention_mask is not None
                and getattr(module, "num_key_value_groups", 1) > 1 and kwargs.get("position_bias") is None):
            return original(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                            is_causal=is_causal, **kwargs)
        output = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
        )
        return output.transpose(1, 2).contiguous(), None

    sdpa.hf_hybrid_cache = True
    return sdpa


def _install_seams() -> None:
    """Idempotent: transformers' grouping, cache class and CPU attention made aware of our batches."""
    if getattr(cb_cache.group_layers_by_attn_type, "hf_hybrid_cache", False):
        return
    grouping = _group_layers(cb_cache.group_layers_by_attn_type)
    cb_cache.group_layers_by_attn_type = initialization.group_layers_by_attn_type = grouping
    continuous_api.PagedAttentionCache = _paged_cache(continuous_api.PagedAttentionCache)
    AttentionInterface.register("sdpa", _sdpa_packed_gqa(AttentionInterface._global_mapping["sdpa"]))


def _check_layer_types(model, text_config) -> None:
    layer_types = set(text_config.layer_types)
    unsupported = sorted(layer_types - set(RECURRENT_LAYER_TYPES) - set(ATTENTION_OF) - set(CACHELESS_LAYER_TYPES))
    if unsupported:
        raise ValueError(
            f"{type(model).__name__} has {', '.join(unsupported)} layers, which transformers' continuous batching "
            "has no allocator for; use model.generate() (cached by hf_hybrid_cache) instead"
        )
    if seams.is_latent_attention(text_config) and not seams.CB_PAGES_LATENT_ATTENTION:
        raise ValueError(
            f"{type(model).__name__} has latent attention (MLA) layers, which transformers' continuous batching pages "
            f"from release 5.25 on (installed: {seams.INSTALLED}); use model.generate() (cached by "
            "hf_hybrid_cache) instead, or upgrade transformers"
        )
    attention_types = sorted({ATTENTION_OF[t] for t in layer_types if t in ATTENTION_OF})
    if len(attention_types) > 1:
        # The engine then hands the model one attention mask per attention type, and the model looks one up
        # for its recurrent layers' type too (LFM3 with sliding-window layers).
        raise ValueError(
            f"{type(model).__name__} has recurrent layers beside {' and '.join(attention_types)} layers, for which "
            "transformers' continuous batching passes masks per attention type only; use model.generate() "
            "(cached by hf_hybrid_cache) instead"
        )


def _num_attention_layers(text_config) -> int:
    return sum(t in ATTENTION_OF for t in text_config.layer_types)


def _kv_bytes_per_token(text_config, dtype: torch.dtype) -> int:
    """Paged K/V bytes per token of every attention layer (transformers' page layout)."""
    return _num_attention_layers(text_config) * seams.cb_page_bytes_per_token(text_config, dtype)


def resolve(model, config: ContinuousBatchingConfig | None) -> HybridBatchingConfig:
    """transformers' config for a hybrid model: the K/V sized from `max_bytes` (on CPU always), and the
    features our recurrent layers do not take turned off (CUDA graphs and compile, which would capture one
    batch's plan; async batching, which packs batch N+1 before N has run; CPU offloading, which moves K/V
    blocks but not states: requests it evicts restart from their tokens instead), and the page size set to
    the store's block size. Registers the model's text config and its store for the seams.

    Raises ValueError when a page size other than the store's block size is asked for, or the store holds
    another model layout."""
    fields = {} if config is None else {f: getattr(config, f) for f in ContinuousBatchingConfig.__dataclass_fields__}
    store, namespace, page_size = None, None, None if config is None else config.page_size
    if isinstance(config, HybridBatchingConfig):
        fields.update((f, getattr(config, f)) for f in ("max_bytes", "max_requests"))
        store, namespace = config.store, config.namespace
    elif page_size == ContinuousBatchingConfig.__dataclass_fields__["page_size"].default:
        page_size = None  # transformers' default, not a choice
    store = store or store_of(model) or get_default_store()
    if page_size is not None and page_size != store.block_size:
        raise ValueError(
            f"page_size={page_size} differs from the prefix store's block_size={store.block_size}: continuous "
            "batching's pages are the store's blocks. Leave page_size unset, or give the engine a store with "
            f"that block size: HybridBatchingConfig(store=PrefixStore(block_size={page_size}))"
        )
    link = StoreLink(store, model, namespace)
    fields.update(use_cuda_graph=False, use_async_batching=False, default_compile_level=0, varlen_compile_config=None,
                  decode_compile_config=None, cpu_offload_space=0.0, block_size=None, use_default_compile_configs=None,
                  page_size=store.block_size, namespace=namespace)
    config = HybridBatchingConfig(**fields)  # without the store, which the registry holds
    text_config = model.config.get_text_config()
    specs = linear_layer_specs(model)
    bytes_per_slot = StateSlots.bytes_per_slot(specs)
    num_slots = config.max_requests
    config.max_requests_per_batch = min(config.max_requests_per_batch or num_slots, num_slots)
    max_bytes = config.max_bytes
    if max_bytes is None and model.device.type == "cpu":
        max_bytes = DEFAULT_CPU_MAX_BYTES
    tokens = None
    if max_bytes is not None:  # else (GPU without a budget) transformers sizes the K/V from what is left
        if model.device.type == "cpu" and config.max_batch_tokens is None:
            config.max_batch_tokens = DEFAULT_CPU_MAX_BATCH_TOKENS
        max_batch_tokens = config.max_batch_tokens or 8192
        kv_and_masks = max_bytes - num_slots * bytes_per_slot
        # transformers' eager / sdpa masks are [max_batch_tokens, cached tokens + max_batch_tokens]
        mask_bytes_per_token = max_batch_tokens * model.dtype.itemsize
        kv_per_token = _kv_bytes_per_token(text_config, model.dtype)
        attention_block = kv_per_token * config.page_size
        bytes_per_sector = math.lcm(attention_block, 128)
        # the cache tensor also holds two trash sectors (padding tokens read from and write to them)
        kv_and_masks -= 2 * bytes_per_sector
        tokens = (kv_and_masks - max_batch_tokens * mask_bytes_per_token) // (kv_per_token + mask_bytes_per_token)
        if tokens < config.page_size:
            raise ValueError(
                f"max_bytes={max_bytes} leaves room for {max(tokens, 0)} cached tokens after {num_slots} state slots "
                f"of {bytes_per_slot} bytes: raise max_bytes or lower max_requests / max_batch_tokens"
            )
        # transformers allocates (`PagedAttentionMemoryHandler.num_sectors_from_config`) whole sectors of
        # lcm(bytes of a block of the attention layers, 128) bytes, as many as `num_blocks` blocks fill, rounded
        # up; `num_blocks` is chosen so that they are the sectors that fit. (What it counts as one block of
        # `num_blocks` differs between releases.)
        bytes_per_block = seams.cb_bytes_per_block(text_config, model.dtype, config.page_size,
                                                   _num_attention_layers(text_config))
        num_sectors = max(1, tokens * kv_per_token // bytes_per_sector)
        config.num_blocks = max(1, num_sectors * bytes_per_sector // bytes_per_block)
        num_sectors = max(1, math.ceil(config.num_blocks * bytes_per_block / bytes_per_sector))
        tokens = num_sectors * bytes_per_sector // attention_block * config.page_size
    _install_seams()
    _REGISTRY[id(text_config)] = _Registered(weakref.ref(text_config), specs, num_slots, link, tokens)
    weakref.finalize(text_config, _REGISTRY.pop, id(text_config), None)
    return config


def init_continuous_batching(model, generation_config=None, continuous_batching_config=None, workload_hints=None):
    """`model.init_continuous_batching` of a patched model with recurrent layers (bound by `patch()`): one-pass
    models get slots and the store (`resolve`); generic-path models are refused with the alternative named
    (their adapters run transformers' own recurrent forward, which needs a `Cache` per sequence)."""
    if model._hf_hybrid_cache_path != "one-pass":
        raise ValueError(
            f"{type(model).__name__} takes hf_hybrid_cache's generic path, which continuous batching does not run; "
            "use model.generate() (cached by hf_hybrid_cache) instead"
        )
    _check_layer_types(model, model.config.get_text_config())
    config = resolve(model, continuous_batching_config)
    manager = type(model).init_continuous_batching(
        model, generation_config=generation_config, continuous_batching_config=config, workload_hints=workload_hints
    )
    if not getattr(manager.add_request, "hf_hybrid_cache", False):
        manager.add_request = _checked_and_prefetched(manager, manager.add_request)
    return manager


def _token_capacity(manager) -> int | None:
    """The tokens one request can hold in the paged K/V: the cache's own once built, else what `resolve`
    sized (None on GPU without max_bytes, before the first batch)."""
    cache = getattr(manager.batch_processor, "cache", None)
    if cache is not None:
        return min(allocator.num_blocks * allocator.tokens_per_page for allocator in cache.cache_allocators.values())
    entry = _registered(manager.model.config.get_text_config())
    return None if entry is None else entry.max_tokens


def _checked_and_prefetched(manager, add_request):
    """transformers' `add_request`, refusing a request longer than the whole cache up front (queued, it would
    stop the engine's loop, "No requests can be scheduled", failing every other request with it), and reading
    its prompt's blocks from the store's remote tier in the caller's thread, so the engine's loop never waits
    on Redis."""

    def checked_add_request(input_ids, request_id=None, max_new_tokens=None, *args, **kwargs):
        capacity = _token_capacity(manager)
        new_tokens = max_new_tokens if max_new_tokens is not None else manager.generation_config.max_new_tokens
        needed = len(input_ids) + (new_tokens or 0)
        if capacity is not None and needed > capacity:
            raise RequestTooLongError(
                f"a prompt of {len(input_ids)} tokens with max_new_tokens={new_tokens} needs {needed} cached tokens; this "
                f"continuous batching cache holds {capacity}: raise HybridBatchingConfig(max_bytes=...) (the server's "
                "--cache-max-bytes-mib) or send a shorter request"
            )
        entry = _registered(manager.model.config.get_text_config())
        if entry is not None:
            entry.link.prefetch(list(input_ids))
        return add_request(input_ids, request_id, max_new_tokens, *args, **kwargs)

    checked_add_request.hf_hybrid_cache = True
    return checked_add_request
