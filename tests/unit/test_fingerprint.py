"""The model fingerprint tells models apart, is computed once, and is recomputed whenever the weights
change: replaced, changed in place, or written through `param.data`."""

import torch

from hf_hybrid_cache.store.fingerprint import model_fingerprint
from hf_hybrid_cache.tiny import tiny_qwen3_next


def test_fingerprint_tells_weights_apart():
    assert model_fingerprint(tiny_qwen3_next(seed=0)) == model_fingerprint(tiny_qwen3_next(seed=0))
    assert model_fingerprint(tiny_qwen3_next(seed=0)) != model_fingerprint(tiny_qwen3_next(seed=1))
    assert model_fingerprint(tiny_qwen3_next(seed=0)) != model_fingerprint(tiny_qwen3_next(seed=0, dtype=torch.bfloat16))


def test_unchanged_model_reuses_its_fingerprint():
    model = tiny_qwen3_next(seed=0)
    fingerprint = model_fingerprint(model)
    memo = model._hf_hybrid_cache_fingerprint
    assert model_fingerprint(model) == fingerprint and model._hf_hybrid_cache_fingerprint is memo


def middle(param: torch.nn.Parameter) -> tuple:
    """An index far from both ends: a value the fingerprint does not sample."""
    return tuple(size // 2 for size in param.shape)


def test_in_place_change_is_caught_by_the_version_counter():
    model = tiny_qwen3_next(seed=0)
    before, memo = model_fingerprint(model), model._hf_hybrid_cache_fingerprint
    weight = model.model.layers[0].mlp.experts.gate_up_proj
    with torch.no_grad():
        weight[middle(weight)] += 1.0  # not a sampled value: only the version counter tells
    assert model_fingerprint(model) == before  # the digest covers the sampled values only
    assert model._hf_hybrid_cache_fingerprint is not memo  # but the samples were read again
    with torch.no_grad():
        weight.mul_(2.0)
    assert model_fingerprint(model) != before


def test_write_through_param_data_is_caught_by_the_samples():
    model, other = tiny_qwen3_next(seed=0), tiny_qwen3_next(seed=1)
    before = model_fingerprint(model)
    model.lm_head.weight.data.copy_(other.lm_head.weight.data)  # no version counter sees this
    assert model_fingerprint(model) != before
    assert model_fingerprint(model) == model_fingerprint(model)


def test_replaced_and_moved_weights_are_caught():
    model = tiny_qwen3_next(seed=0)
    before = model_fingerprint(model)
    model.lm_head.weight.data = model.lm_head.weight.data.clone()  # same values, new tensor
    replaced = model_fingerprint(model)
    assert replaced == before  # same weights, same model: entries stay valid
    assert model._hf_hybrid_cache_fingerprint.state[-1][0] == model.lm_head.weight.data_ptr()
    assert model_fingerprint(model.to(torch.bfloat16)) != before
