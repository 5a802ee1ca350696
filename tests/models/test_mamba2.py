"""Mamba2 mixers on the one-pass path apply the floor of their step size (`time_step_limit`) as transformers does: to
every prompt token, a one-token rest of the prompt after a hit included, and to no generated token. Zamba2 (and
Nemotron-H on transformers 5.24) floor the step at 0.001; a dt_bias of -9 puts it under the floor, so the state a
cached run reaches differs from a cold prefill's if the floor is applied to the wrong tokens."""

import torch
from transformers import DynamicCache

import hf_hybrid_cache as hhc
from cold_oracle import random_tokens
from hf_hybrid_cache.tiny import tiny_model


def floored(model):
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "time_step_limit") and hasattr(module, "dt_bias"):
                assert module.time_step_limit[0] > 0
                module.dt_bias.fill_(-9.0)
    return model


def test_a_one_token_rest_of_the_prompt_is_floored_as_in_a_cold_prefill():
    cold, model = floored(tiny_model("zamba2", seed=0)), floored(hhc.patch(tiny_model("zamba2", seed=0)))
    store = hhc.PrefixStore(block_size=16, mamba_cache_mode="all")
    first = random_tokens(64, seed=1)[None]
    second = torch.cat([first, random_tokens(1, seed=2)[None]], dim=1)
    model.generate(first, cache=hhc.HybridPrefixCache(model, store=store), max_new_tokens=1, do_sample=False)
    cache, cold_cache = hhc.HybridPrefixCache(model, store=store), DynamicCache(config=cold.config)
    model.generate(second, cache=cache, max_new_tokens=1, do_sample=False)
    cold.generate(second, past_key_values=cold_cache, max_new_tokens=1, do_sample=False)
    assert cache.num_cached_tokens == 64  # the 65th token ran alone, as a one-token step
    mamba_layers = [i for i, layer in enumerate(cold_cache.layers) if getattr(layer, "recurrent_states", None)]
    assert mamba_layers
    for i in mamba_layers:
        torch.testing.assert_close(cache.layers[i].recurrent_states[0], cold_cache.layers[i].recurrent_states[0],
                                   rtol=1e-4, atol=1e-6)
