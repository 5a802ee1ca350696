"""`patch(model)`: GDN layers on our kernels, and a `generate` that serves and feeds the prefix store.

The wrapped `generate` only acts when the cache passed in is a `HybridPrefixCache`; anything else goes
straight to transformers' own `generate`.
"""

import types

import torch

from .adapters import adapter_for
from .cache import HybridPrefixCache


def patch(model: torch.nn.Module) -> torch.nn.Module:
    """Prepare `model` (a Qwen3-Next causal LM) for `HybridPrefixCache`; idempotent. Returns `model`.

    Outputs are unchanged with a `DynamicCache` or no cache at all.
    """
    adapter = adapter_for(model)
    if getattr(model, "_hf_hybrid_cache_patched", False):
        return model
    adapter.patch_layers(model)
    # Bound to the instance (not a closure), so `copy.deepcopy(model)` rebinds it to the copy.
    model.generate = types.MethodType(_generate, model)
    model._hf_hybrid_cache_patched = True
    return model


def _generate(self, *args, **kwargs):
    cache = kwargs.get("past_key_values", kwargs.get("cache"))
    if not isinstance(cache, HybridPrefixCache):
        return type(self).generate(self, *args, **kwargs)
    if cache.model is not self:
        raise ValueError(
            "This HybridPrefixCache was built for another model: create one per model, "
            "HybridPrefixCache(model, store=...)."
        )
    _check_generation_settings(self, kwargs)
    input_ids = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
    _check_input_ids(self, input_ids)
    try:
        cache.begin_request(input_ids, kwargs.get("attention_mask"))
        output = type(self).generate(self, *args, **kwargs)
    except BaseException:
        # Interrupts included: nothing of a half-run request reaches the store.
        cache.abort_request()
        raise
    sequences = output if isinstance(output, torch.Tensor) else getattr(output, "sequences", None)
    cache.end_request(sequences)
    return output


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
