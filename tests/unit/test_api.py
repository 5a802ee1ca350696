"""The public surface: patching, errors that name the fix, reprs and stats."""

import pytest
import torch
from transformers import MiniMaxConfig, MiniMaxForCausalLM

import hf_hybrid_cache as hhc
from hf_hybrid_cache.models.qwen3_next import PrefixQwen3NextGatedDeltaNet
from hf_hybrid_cache.tiny import tiny_qwen3_next


@pytest.fixture(scope="module")
def model():
    return hhc.patch(tiny_qwen3_next(seed=0))


def test_patch_is_idempotent(model):
    generate = model.generate
    assert hhc.patch(model) is model and model.generate == generate
    gdn_layers = [layer.linear_attn for layer in model.model.layers if hasattr(layer, "linear_attn")]
    assert gdn_layers and all(type(gdn) is PrefixQwen3NextGatedDeltaNet for gdn in gdn_layers)


def test_a_model_with_a_cache_class_of_its_own_is_refused_at_patch():
    """MiniMax runs only on its MiniMaxCache: refused at patch(), with the reason, not inside generate."""
    minimax = MiniMaxForCausalLM(MiniMaxConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, num_local_experts=2, num_experts_per_tok=1,
        layer_types=["linear_attention", "full_attention"],
    ))
    with pytest.raises(ValueError, match=r"cache class of its own \(MiniMaxCache\).*Supported: decoder-only"):
        hhc.patch(minimax)
    assert not hasattr(minimax, "_hf_hybrid_cache_patched")
    with pytest.raises(ValueError, match=r"not patched: call hf_hybrid_cache.patch\(model\)"):
        hhc.HybridPrefixCache(minimax)


def test_unpatched_model_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"hf_hybrid_cache.patch\(model\)"):
        hhc.HybridPrefixCache(tiny_qwen3_next(seed=0))


def test_default_store_is_shared_and_replaceable(model):
    assert hhc.HybridPrefixCache(model).store is hhc.HybridPrefixCache(model).store is hhc.get_default_store()
    mine = hhc.PrefixStore(block_size=16)
    hhc.set_default_store(mine)
    assert hhc.HybridPrefixCache(model).store is mine
    with pytest.raises(TypeError, match="PrefixStore"):
        hhc.set_default_store("big")


def test_reprs_and_stats(model):
    store = hhc.PrefixStore(block_size=16, mamba_cache_mode="all", max_bytes=8 << 20)
    cache = hhc.HybridPrefixCache(model, store=store, namespace="docs")
    model.generate(torch.randint(3, 300, (1, 40)), past_key_values=cache, max_new_tokens=3)
    stats = store.stats()
    assert {"queries", "query_tokens", "hit_tokens", "blocks", "snapshots", "bytes_used", "max_bytes",
            "evictions"} <= set(stats)
    assert (stats["queries"], stats["query_tokens"], stats["blocks"], stats["snapshots"]) == (1, 40, 2, 2)
    assert stats["bytes_used"] == 2 * stats["page_bytes"] + 2 * stats["snapshot_bytes"]
    assert "blocks=2" in repr(store) and "namespace='docs'" in repr(cache)


def test_cache_refuses_crop_outside_assisted_decoding(model):
    with pytest.raises(ValueError, match="new HybridPrefixCache"):
        hhc.HybridPrefixCache(model).crop(-1)


def test_every_model_class_of_a_family_is_accepted():
    """Base models and heads run their GDN layers patched; only models with generate get the wrapper.
    Patching the base model first (as happens when each class is patched at construction) still gives
    the causal LM the one-pass path."""
    from transformers import Qwen3NextForSequenceClassification, Qwen3NextModel

    from hf_hybrid_cache.tiny import tiny_qwen3_next_config

    config = tiny_qwen3_next_config()
    for model in (Qwen3NextModel(config), Qwen3NextForSequenceClassification(config)):
        assert hhc.patch(model) is model and not hasattr(model, "_hf_hybrid_cache_path")
        assert any(type(module) is PrefixQwen3NextGatedDeltaNet for module in model.modules())
        with pytest.raises(ValueError, match="has no generate"):
            hhc.HybridPrefixCache(model)
    causal_lm = tiny_qwen3_next(seed=0)
    hhc.patch(causal_lm.model)
    assert hhc.patch(causal_lm)._hf_hybrid_cache_path == "one-pass"


def test_a_plain_forward_on_a_hybrid_prefix_cache_names_dynamic_cache(model):
    """model(...) is not generate: the message says what a plain forward should run on, for this same model."""
    from transformers import DynamicCache

    cache = hhc.HybridPrefixCache(model)
    with pytest.raises(RuntimeError, match=r"plain forward.*DynamicCache\(config=model.config\)"):
        model(torch.randint(3, 300, (1, 8)), cache=cache)
    model(torch.randint(3, 300, (1, 8)), cache=DynamicCache(config=model.config))


def test_generate_reads_the_model_classes_own_input_preparation_signature(model):
    """generate inspects `prepare_inputs_for_generation` (is `inputs_embeds` forwarded? which keywords are the
    model's?): ours has the class's signature, so generating from embeddings works as unpatched."""
    import inspect

    cold = tiny_qwen3_next(seed=0)
    assert inspect.signature(model.prepare_inputs_for_generation) == inspect.signature(cold.prepare_inputs_for_generation)
    embeds = model.get_input_embeddings()(torch.randint(3, 300, (1, 20), generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        expected = cold.generate(inputs_embeds=embeds, max_new_tokens=5, do_sample=False)
        assert torch.equal(model.generate(inputs_embeds=embeds, max_new_tokens=5, do_sample=False), expected)
