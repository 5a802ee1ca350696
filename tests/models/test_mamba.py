"""Mamba (v1) mixers on the one-pass path (Jamba, Zamba): each patched layer computes what transformers' own layer
computes, and continues a cached state as one forward does (transformers' own multi-token step starts from zeros).
The tiny models' decays are slowed (dt_bias -4, A scaled down) so that the state carries across tokens and a wrong
start shows."""

import pytest
import torch
from transformers import DynamicCache

import hf_hybrid_cache as hhc
from cold_oracle import random_tokens
from hf_hybrid_cache.models.mamba import PrefixMambaMixer
from hf_hybrid_cache.tiny import tiny_model

FAMILIES = ["jamba", "zamba"]


def long_memory(model):
    """Decays that keep the state for tens of tokens."""
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "A_log") and module.A_log.dim() >= 2:
                module.A_log.sub_(3.0)
                bias = module.dt_proj.bias if hasattr(module, "dt_proj") else module.dt_proj_bias
                bias.fill_(-4.0)
    return model


def mamba_layers(model):
    return [m for m in model.modules() if hasattr(m, "A_log") and hasattr(m, "conv1d") and m.A_log.dim() >= 2]


@pytest.mark.parametrize("family", FAMILIES)
def test_patched_layers_compute_what_transformers_layers_compute(family):
    cold, model = long_memory(tiny_model(family, seed=0)), long_memory(hhc.patch(tiny_model(family, seed=0)))
    assert all(isinstance(m, PrefixMambaMixer) for m in mamba_layers(model))
    hidden = torch.randn(2, 45, model.config.hidden_size)
    mask = torch.ones(2, 45, dtype=torch.long)
    mask[1, :7] = 0  # left padding
    with torch.no_grad():
        for ours, theirs in zip(mamba_layers(model), mamba_layers(cold)):
            torch.testing.assert_close(ours(hidden, attention_mask=mask), theirs(hidden, attention_mask=mask),
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_continued_prefill_equals_one_forward(family):
    cold, model = long_memory(tiny_model(family, seed=0)), long_memory(hhc.patch(tiny_model(family, seed=0)))
    tokens = random_tokens(60, seed=3)[None]
    with torch.no_grad():
        whole = cold(tokens).logits[:, 40:]

        def continued(m):
            cache = DynamicCache(config=m.config)
            m(tokens[:, :40], past_key_values=cache)
            return m(tokens[:, 40:], past_key_values=cache, position_ids=torch.arange(40, 60)[None]).logits

        ours = continued(model)
        theirs = continued(cold)
    torch.testing.assert_close(ours, whole, rtol=1e-4, atol=1e-4)
    # transformers' own multi-token step restarts the scan from zeros (Jamba's error ~1, Zamba's ~1e-3 here).
    assert (theirs - whole).abs().max() > 100 * (ours - whole).abs().max()
