"""`patch(model)`: the mixers we have an adapter for (`adapters.py`: gated-delta-rule layers on our one-pass
kernels, Jamba's Mamba layer made to continue from a cached state), and a `generate` that serves and feeds
the prefix store.

Two paths, picked per model. One-pass: every recurrent layer is one of our GatedDeltaNets, whose forward
hands over the states at block boundaries inside a prefill. Generic: any other recurrent layer (Mamba,
Mamba2, short convs, KDA ...) runs transformers' own forward, and the prefill is split at exactly the
boundaries the mode saves. Models without recurrent layers need neither.
The wrapped `generate` acts when the cache passed in is a `HybridPrefixCache`, or when none is passed and
auto mode is on (`auto.py`); anything else goes straight to transformers' own `generate`.
"""

import inspect
import types

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, LinearAttentionCacheLayerMixin

from . import auto as auto_mode
from . import vision
from .adapters import is_one_pass_mixer, patched_mixer_class
from .cache import HybridPrefixCache
from .layout import SUPPORTED_CACHE_LAYERS
from .prefix_store import PrefixStore

ONE_PASS = "one-pass"
GENERIC = "generic"
ATTENTION_ONLY = "attention-only"
# Inputs whose content the block keys cannot see (except images and videos of the models `vision.py` knows):
# such requests run uncached.
UNKEYED_INPUTS = ("pixel_values", "pixel_values_videos", "input_features", "image_embeds", "inputs_embeds")
SUPPORTED_MODELS = (
    "decoder-only models whose cache layers are full attention, recurrent states or both: gated-delta-rule "
    "families on our kernels (qwen3_next, qwen3_5, qwen3_5_moe, olmo_hybrid), Mamba2 / short-conv / KDA "
    "hybrids on transformers' own layers (nemotron_h, granitemoehybrid, falcon_h1, bamba, jamba, lfm2, kimi_linear, "
    "...), and plain attention models (llama, qwen3, mistral, ...)"
)


def patch(model: torch.nn.Module, auto: bool | None = None, store: PrefixStore | None = None) -> torch.nn.Module:
    """Prepare `model` for `HybridPrefixCache`; idempotent. Returns `model`.

    Accepts every model class of a supported family (causal LMs, vision-language models, base models,
    classification heads): its GatedDeltaNet layers, if any, run on our kernels. Models with `generate`
    also gain the prefix-cache wrapper. Outputs are unchanged with any other cache or none, and anything
    autograd differentiates runs on transformers' own layers.

    Runs nothing: a model still on the meta device (not loaded yet) can be patched; its cache layout is
    read at the first `HybridPrefixCache`.

    Args:
        auto: True: every `generate()` that passes no cache runs on a `HybridPrefixCache` over `store` (what
            caching cannot serve, such as a batch or beam search, runs as unpatched generate); False: turn
            that off again; None (default): leave it as it is.
        store: the `PrefixStore` auto mode uses; None: the process-wide one (`get_default_store()`).

    Raises:
        ValueError: the model cannot be served (encoder-decoder, sliding-window or indexed attention, no
            attention layer at all); the message says why and lists what is supported.
    """
    if not getattr(model, "_hf_hybrid_cache_patched", False):
        _patch(model)
    if auto is not None:
        auto_mode.configure(model, auto, store)
    elif store is not None:
        raise ValueError("store= is the store auto mode uses: pass it with auto=True.")
    return model


def _patch(model: torch.nn.Module) -> None:
    cache_layers = _check_supported(model)
    _swap_mixers(model)
    if _can_generate(model):
        recurrent_layers = {idx for idx, layer in enumerate(cache_layers) if isinstance(layer, LinearAttentionCacheLayerMixin)}
        # Mixers swapped now or earlier (a submodule such as the base model may have been patched first).
        one_pass_layers = {module.layer_idx for module in model.modules() if is_one_pass_mixer(module)}
        if not recurrent_layers:
            model._hf_hybrid_cache_path = ATTENTION_ONLY
        else:
            model._hf_hybrid_cache_path = ONE_PASS if recurrent_layers <= one_pass_layers else GENERIC
        # Bound to the instance (not a closure), so `copy.deepcopy(model)` rebinds it to the copy.
        model.generate = types.MethodType(_generate, model)
        model.register_forward_hook(_end_step, with_kwargs=True)
    model._hf_hybrid_cache_patched = True


def _check_supported(model: torch.nn.Module) -> list:
    """Raise ValueError if `model` cannot be served; return its cache layers (transformers' own classes)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "get_text_config") or getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"hf_hybrid_cache cannot serve {type(model).__name__}. Supported: {SUPPORTED_MODELS}.")
    cache_layers = DynamicCache(config=config).layers
    for layer_idx, layer in enumerate(cache_layers):
        if type(layer) not in SUPPORTED_CACHE_LAYERS:
            raise ValueError(
                f"{type(model).__name__} ({config.get_text_config(decoder=True).model_type}) has a "
                f"{type(layer).__name__} cache at layer {layer_idx}: hf_hybrid_cache stores full-attention K/V and "
                "recurrent states only, and sliding-window, chunked or indexed attention (Gemma 3, gpt-oss, Llama 4, "
                f"...) keeps K/V it could not page. Supported: {SUPPORTED_MODELS}."
            )
    if not any(isinstance(layer, DynamicLayer) for layer in cache_layers):
        raise ValueError(
            f"{type(model).__name__} has no attention layer: transformers' generate cannot continue a cache that "
            f"holds recurrent states only, so there is nothing to restore into. Supported: {SUPPORTED_MODELS}."
        )
    return cache_layers


def _can_generate(model: torch.nn.Module) -> bool:
    can_generate = getattr(model, "can_generate", None)
    return bool(can_generate()) if callable(can_generate) else False


def _swap_mixers(model: torch.nn.Module) -> None:
    """Turn every mixer with an adapter into our class (same weights, same module)."""
    for module in model.modules():
        patched_class = patched_mixer_class(module)  # None for ours: they are not in the adapter table
        if patched_class is None:
            continue
        module.__class__ = patched_class
        if hasattr(module, "_old_forward"):
            # accelerate's hooks (device_map) call the forward they wrapped, bound before the patch.
            module._old_forward = types.MethodType(patched_class.forward, module)


def _end_step(model, args, kwargs, output) -> None:
    """Forward hook: tell a `HybridPrefixCache` that a step of the model ended (how many tokens it took)."""
    cache = kwargs.get("past_key_values", kwargs.get("cache"))
    if not isinstance(cache, HybridPrefixCache) or not cache._in_request:
        return
    tokens = kwargs.get("input_ids")
    if tokens is None:
        tokens = kwargs.get("inputs_embeds", args[0] if args else None)
    cache.end_step(tokens.shape[1])


def _generate(self, *args, **kwargs):
    cache = kwargs.get("past_key_values", kwargs.get("cache"))
    if cache is None and auto_mode.wants_cache(self, args, kwargs):
        kwargs.pop("past_key_values", None)
        cache = kwargs["cache"] = HybridPrefixCache(self, store=auto_mode.store_of(self))
        return _generate_on(self, cache, args, kwargs, record_hit=True)
    if not isinstance(cache, HybridPrefixCache):
        return type(self).generate(self, *args, **kwargs)
    return _generate_on(self, cache, args, kwargs)


def _generate_on(self, cache: HybridPrefixCache, args: tuple, kwargs: dict, record_hit: bool = False):
    if cache.model is not self:
        raise ValueError(
            "This HybridPrefixCache was built for another model: create one per model, "
            "HybridPrefixCache(model, store=...)."
        )
    _check_generation_settings(self, kwargs)
    input_ids = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
    _check_input_ids(self, input_ids)
    media = []
    if vision.is_vision_model(self) and isinstance(input_ids, torch.Tensor) and input_ids.shape[0] == 1:
        media = vision.media_items(self, input_ids, kwargs)
    elif any(kwargs.get(name) is not None for name in UNKEYED_INPUTS):
        media = None
    requested_ids = input_ids
    if media is None:
        input_ids, media = None, []  # nothing to look up or publish: the keys would not see those inputs
    try:
        cache.begin_request(input_ids, kwargs.get("attention_mask"), media)
        if record_hit:
            # Before generating: a streaming caller reports usage as soon as generate's streamer ends.
            auto_mode.record(requested_ids, cache.num_cached_tokens)
        if cache.num_cached_tokens and vision.is_vision_model(self):
            kwargs = vision.inputs_after_hit(self, kwargs, media, cache.num_cached_tokens)
        if self._hf_hybrid_cache_path == GENERIC:
            _prefill_to_boundaries(self, cache, input_ids)
        output = type(self).generate(self, *args, **kwargs)
    except BaseException:
        # Interrupts included: nothing of a half-run request reaches the store.
        cache.abort_request()
        raise
    sequences = output if isinstance(output, torch.Tensor) else getattr(output, "sequences", None)
    cache.end_request(sequences)
    return output


@torch.no_grad()
def _prefill_to_boundaries(model, cache: HybridPrefixCache, input_ids: torch.Tensor) -> None:
    """Run the prompt up to each boundary the mode saves, one forward per stretch: the step hook then
    snapshots the states there. Generate computes the rest of the prompt from the cache."""
    boundaries = cache.prefill_boundaries()
    if not boundaries:
        return
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    for boundary in boundaries:
        start = cache.num_seen_tokens
        # Positions passed explicitly, as generate does: some families (Bamba) restart them at 0 otherwise.
        positions = torch.arange(start, boundary, device=input_ids.device)[None]
        model(input_ids=input_ids[:, start:boundary], position_ids=positions, cache=cache, use_cache=True, **extra)


def _check_generation_settings(model, kwargs) -> None:
    config = kwargs.get("generation_config") or model.generation_config
    num_beams = kwargs.get("num_beams", config.num_beams) or 1
    num_return_sequences = kwargs.get("num_return_sequences", config.num_return_sequences) or 1
    if num_beams > 1 or num_return_sequences > 1:
        raise ValueError(
            f"HybridPrefixCache runs one sequence per prompt (got num_beams={num_beams}, "
            f"num_return_sequences={num_return_sequences}). For beam search, generate without it "
            "(past_key_values=None uses a DynamicCache); for several samples, call generate once per sample "
            "with a new HybridPrefixCache each: the shared prompt is then served from the store."
        )


def _check_input_ids(model, input_ids) -> None:
    if not isinstance(input_ids, torch.Tensor):
        return  # inputs_embeds: nothing to look up, generate validates the rest
    if input_ids.ndim != 2 or input_ids.numel() == 0:
        raise ValueError(
            f"input_ids must be a non-empty [batch, seq_len] tensor, got shape {tuple(input_ids.shape)}: "
            "tokenize a non-empty prompt, e.g. tokenizer(text, return_tensors='pt').input_ids."
        )
    vocab_size = model.get_input_embeddings().num_embeddings
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"input_ids hold token ids in [{low}, {high}] but the model's vocabulary is [0, {vocab_size - 1}]: "
            "use the tokenizer that belongs to this model."
        )
