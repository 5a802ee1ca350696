"""`patch(model)`: the mixers we have an adapter for (`models/registry.py`: gated-delta-rule layers on our
one-pass kernels, Jamba's Mamba layer made to continue from a cached state), and a `generate` that hands
each request on a `HybridPrefixCache` to `request.py`.

Two paths, picked per model. One-pass: every recurrent layer is one of our GatedDeltaNets, whose forward
hands over the states at block boundaries inside a prefill. Generic: any other recurrent layer (Mamba,
Mamba2, short convs, KDA ...) runs transformers' own forward, and the prefill is split at exactly the
boundaries the mode saves. Models without recurrent layers need neither.
The wrapped `generate` acts when the cache passed in is a `HybridPrefixCache`, or when none is passed and
auto mode is on (`integrations/auto.py`): one sequence goes to `request.py`, several (a batch, samples,
beams) to `batch.py`. Anything else goes straight to transformers' own `generate`.
"""

import functools
import sys
import types

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, LinearAttentionCacheLayerMixin

from . import seams
from .cache import HybridPrefixCache
from .integrations import auto as auto_mode
from .layout import SUPPORTED_CACHE_LAYERS
from .models.registry import is_one_pass_mixer, patched_mixer_class, refusal
from .models.wrappers import unwrap
from .batch import BatchRequest
from .request import (
    ATTENTION_ONLY, GENERIC, ONE_PASS, PrefixRequest, refuse_multi_token_prediction, sequences_per_prompt,
)
from .store.prefix_store import PrefixStore

SUPPORTED_MODELS = (
    "decoder-only models whose cache layers are full, sliding-window or indexed attention, recurrent states or "
    "both, with at least one attention layer: gated-delta-rule and short-conv families on our kernels (qwen3_next, "
    "qwen3_5, qwen3_5_moe, olmo_hybrid, qwen4_exp, lfm2, lfm2_moe, lfm3), Mamba / Mamba2 / KDA hybrids on "
    "transformers' own layers (nemotron_h, granitemoehybrid, falcon_h1, bamba, jamba, kimi_linear, zamba, "
    "...), and attention models (llama, qwen3, mistral, gemma3, gpt_oss, ...); README's table lists every family"
)


def patch(
    model: torch.nn.Module,
    auto: bool | None = None,
    store: PrefixStore | None = None,
    allow_untested_transformers: bool | None = None,
) -> torch.nn.Module:
    """Prepare `model` for `HybridPrefixCache`; idempotent. Returns `model`.

    Accepts every model class of a supported family (causal LMs, vision-language models, base models,
    classification heads): its GatedDeltaNet layers, if any, run on our kernels. Models with `generate`
    also gain the prefix-cache wrapper. Outputs are unchanged with any other cache or none, and anything
    autograd differentiates runs on transformers' own layers.

    Runs nothing: a model still on the meta device (not loaded yet) can be patched; its cache layout is
    read at the first `HybridPrefixCache`. A peft `PeftModel` or a `torch.compile`d model is served through
    the transformers model inside it (`models/wrappers.py`); the wrapper is returned.

    Args:
        auto: True: every `generate()` that passes no cache runs on a `HybridPrefixCache` over `store`
            (batches, samples and beams included; what caching cannot serve, such as assisted decoding,
            runs as unpatched generate); False: turn that off again; None (default): leave it as it is.
        store: the `PrefixStore` auto mode uses; None: the process-wide one (`get_default_store()`).
        allow_untested_transformers: patch even on a transformers release outside the tested range (`seams.py`),
            with a warning; None: as the environment variable `HF_HYBRID_CACHE_ALLOW_UNTESTED_TRANSFORMERS` says.

    Raises:
        RuntimeError: the installed transformers is outside the tested range and no opt-in was given.
        ValueError: the model cannot be served (encoder-decoder, a cache class of its own, no attention layer
            at all, prompt-learning peft adapters); the message says why and lists what is supported.
    """
    seams.check_release(allow_untested_transformers)
    served = unwrap(model)
    if not getattr(served, "_hf_hybrid_cache_patched", False):
        _patch(served)
    if auto is not None:
        auto_mode.configure(served, auto, store)
    elif store is not None:
        raise ValueError("store= is the store auto mode uses: pass it with auto=True.")
    return model


def _patch(model: torch.nn.Module) -> None:
    cache_layers = _check_supported(model)
    _swap_mixers(model)
    if _can_generate(model):
        recurrent = {idx: layer for idx, layer in enumerate(cache_layers) if isinstance(layer, LinearAttentionCacheLayerMixin)}
        # Mixers swapped now or earlier (a submodule such as the base model may have been patched first).
        one_pass_layers = {module.layer_idx for module in model.modules() if is_one_pass_mixer(module)}
        # One pass only when our GatedDeltaNets write every state: a layer holding more (Qwen4-Exp's PLE conv
        # states) has states other modules write, which only a split prefill can snapshot inside a prompt.
        single_state = all(getattr(layer, "number_of_states", 1) == 1 for layer in recurrent.values())
        if not recurrent:
            model._hf_hybrid_cache_path = ATTENTION_ONLY
        else:
            model._hf_hybrid_cache_path = ONE_PASS if set(recurrent) <= one_pass_layers and single_state else GENERIC
        # Bound to the instance (not a closure), so `copy.deepcopy(model)` rebinds it to the copy.
        model.generate = types.MethodType(_generate, model)
        model.prepare_inputs_for_generation = types.MethodType(_prepare_inputs_wrapper(type(model)), model)
        model.register_forward_hook(_end_step, with_kwargs=True)
        if recurrent and hasattr(model, "init_continuous_batching"):
            model.init_continuous_batching = types.MethodType(_init_continuous_batching, model)
    model._hf_hybrid_cache_patched = True


def _init_continuous_batching(model, *args, **kwargs):
    """transformers' continuous batching with our recurrent-state slots (`continuous/engine.py`, imported on
    first use: it loads transformers' engine)."""
    from .continuous.engine import init_continuous_batching

    return init_continuous_batching(model, *args, **kwargs)


def _check_supported(model: torch.nn.Module) -> list:
    """Raise ValueError if `model` cannot be served; return its cache layers (transformers' own classes)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "get_text_config") or getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"hf_hybrid_cache cannot serve {type(model).__name__}. Supported: {SUPPORTED_MODELS}.")
    model_type = config.get_text_config(decoder=True).model_type
    reason = refusal(config)
    if reason is not None:
        raise ValueError(f"{type(model).__name__} ({model_type}) cannot be served: {reason}.")
    own_cache = _own_cache_class(model)
    if own_cache is not None:
        raise ValueError(
            f"{type(model).__name__} ({model_type}) keeps its state in a cache "
            f"class of its own ({own_cache.__name__}) and refuses any other, so a HybridPrefixCache cannot stand in "
            f"for it. Supported: {SUPPORTED_MODELS}."
        )
    cache_layers = DynamicCache(config=config).layers
    for layer_idx, layer in enumerate(cache_layers):
        if type(layer) not in SUPPORTED_CACHE_LAYERS:
            raise ValueError(
                f"{type(model).__name__} ({config.get_text_config(decoder=True).model_type}) has a "
                f"{type(layer).__name__} cache at layer {layer_idx}, a kind hf_hybrid_cache does not know how to page "
                f"or snapshot. Supported: {SUPPORTED_MODELS}."
            )
    if not any(isinstance(layer, DynamicLayer) for layer in cache_layers):
        raise ValueError(
            f"{type(model).__name__} has no attention layer: transformers' generate cannot continue a cache that "
            f"holds recurrent states only, so there is nothing to restore into. Supported: {SUPPORTED_MODELS}."
        )
    return cache_layers


def _own_cache_class(model: torch.nn.Module) -> type | None:
    """A `Cache` subclass defined in the model's own modeling module (MiniMax's `MiniMaxCache`), if any."""
    module = sys.modules.get(type(model).__module__)
    for obj in vars(module).values() if module is not None else ():
        if isinstance(obj, type) and issubclass(obj, Cache) and obj.__module__ == module.__name__:
            return obj
    return None


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


def _prepare_inputs_wrapper(model_class: type):
    """`_prepare_inputs_for_generation` with the signature of `model_class`'s own: generate reads that signature
    (whether `inputs_embeds` is forwarded, which keyword arguments are the model's)."""

    @functools.wraps(model_class.prepare_inputs_for_generation)
    def prepare_inputs_for_generation(self, input_ids, *args, **kwargs):
        return _prepare_inputs_for_generation(self, input_ids, *args, **kwargs)

    return prepare_inputs_for_generation


def _prepare_inputs_for_generation(self, input_ids, *args, **kwargs):
    """transformers' own, except on a `HybridPrefixCache` holding a restored prefix when the first forward of
    assisted decoding comes (prompt lookup, assistant models): transformers runs that forward over the whole
    sequence (it expects an empty cache there, while generate's other first forwards slice off what the cache
    holds, in `_prefill`), which would run the restored prefix a second time. It gets what the cache does not
    hold. The inputs are the whole sequence when they are at least the request's prompt (the inputs our request
    hands generate are always the whole prompt)."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if (
        kwargs.get("is_first_iteration") and kwargs.get("next_sequence_length") is None
        and isinstance(cache, HybridPrefixCache) and 0 < cache.num_seen_tokens < input_ids.shape[1]
        and input_ids.shape[1] >= cache.prompt_length
    ):
        kwargs["next_sequence_length"] = input_ids.shape[1] - cache.num_seen_tokens
    return type(self).prepare_inputs_for_generation(self, input_ids, *args, **kwargs)


def _generate(self, *args, **kwargs):
    cache = kwargs.get("past_key_values", kwargs.get("cache"))
    auto = cache is None and auto_mode.wants_cache(self, args, kwargs)
    if auto:
        kwargs.pop("past_key_values", None)
        cache = kwargs["cache"] = HybridPrefixCache(self, store=auto_mode.store_of(self))
    elif not isinstance(cache, HybridPrefixCache):
        return type(self).generate(self, *args, **kwargs)
    if cache.model is not self:
        raise ValueError(
            "This HybridPrefixCache was built for another model: create one per model, "
            "HybridPrefixCache(model, store=...)."
        )
    refuse_multi_token_prediction(self, kwargs)
    input_ids = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
    num_beams, num_return_sequences = sequences_per_prompt(self, kwargs)
    batch_size = input_ids.shape[0] if isinstance(input_ids, torch.Tensor) and input_ids.ndim == 2 else 1
    if batch_size > 1 or num_beams > 1 or num_return_sequences > 1:
        return BatchRequest(self, cache, args, kwargs, num_beams, num_return_sequences, auto=auto).run()
    return PrefixRequest(self, cache, args, kwargs, record_hit=auto).run()
