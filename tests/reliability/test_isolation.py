"""Tenants and models sharing one store never see each other's entries: the namespace and the model
fingerprint are hashed into the root of every block key."""


import hf_hybrid_cache as hhc
from hf_hybrid_cache.store.fingerprint import model_fingerprint
from hf_hybrid_cache.store.hashing import block_keys, root_key
from hf_hybrid_cache.tiny import tiny_qwen3_next
from reliability_support import assert_same_as_cold, assert_store_at_rest, cold_generate, generate, random_tokens

BLOCK_SIZE = 16
PROMPT = random_tokens(60, seed=50)[None]
HIT = 48  # the last boundary before the prompt's final token


def new_store():
    return hhc.PrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode="all", max_bytes=64 << 20)


def run(model, store, namespace=None):
    cache = hhc.HybridPrefixCache(model, store=store, namespace=namespace)
    return generate(model, PROMPT, cache, max_new_tokens=3), cache


def test_namespaces_never_hit_each_other(model, cold_model):
    store = new_store()
    cold = cold_generate(cold_model, PROMPT, max_new_tokens=3)
    namespaces = ["tenant-a", "tenant-b", None, "", "tenant-a "]
    for namespace in namespaces:
        output, cache = run(model, store, namespace)
        assert_same_as_cold(output, cold)
        assert cache.num_cached_tokens == 0, f"namespace {namespace!r} hit another namespace's entries"
    blocks_per_namespace = store.stats()["blocks"] // len(namespaces)
    assert store.stats()["blocks"] == len(namespaces) * blocks_per_namespace > 0
    for namespace in namespaces:  # each namespace hits its own entries
        output, cache = run(model, store, namespace)
        assert_same_as_cold(output, cold)
        assert cache.num_cached_tokens == HIT
    assert_store_at_rest(store)


def test_namespace_is_hashed_into_every_key(model):
    store = new_store()
    fingerprint = model_fingerprint(model)
    output, cache = run(model, store, "tenant-a")
    assert cache._root == root_key(fingerprint, "tenant-a")
    stored = set(store.lru_keys())
    tokens = output.sequences[0, :-1]  # the last token was generated, never computed
    assert stored == set(block_keys(root_key(fingerprint, "tenant-a"), tokens, BLOCK_SIZE))
    for namespace in ("tenant-b", None, ""):
        assert stored.isdisjoint(block_keys(root_key(fingerprint, namespace), tokens, BLOCK_SIZE))
    assert len({root_key(fingerprint, ns) for ns in ("tenant-a", "tenant-b", None, "")}) == 4


def test_models_sharing_a_store_never_hit_each_other(model, cold_model, other_model):
    """Same cache layout, so one store takes them all: other weights, or the same weights under
    another config, must not be served each other's prefixes."""
    other_config = hhc.patch(tiny_qwen3_next(seed=0, rms_norm_eps=1e-3))
    other_width = hhc.patch(tiny_qwen3_next(seed=0, hidden_size=32))  # same cache shapes, other model
    others = {
        "other-weights": (other_model, tiny_qwen3_next(seed=1)),
        "other-config": (other_config, tiny_qwen3_next(seed=0, rms_norm_eps=1e-3)),
        "other-width": (other_width, tiny_qwen3_next(seed=0, hidden_size=32)),
    }
    store = new_store()
    run(model, store)
    for name, (patched, cold) in others.items():
        output, cache = run(patched, store)
        assert cache.num_cached_tokens == 0, f"{name} was served the first model's prefix"
        assert_same_as_cold(output, cold_generate(cold, PROMPT, max_new_tokens=3))
    output, cache = run(model, store)
    assert cache.num_cached_tokens == HIT
    assert_same_as_cold(output, cold_generate(cold_model, PROMPT, max_new_tokens=3))
    assert_store_at_rest(store)


def test_weights_replaced_through_data_are_not_served_old_prefixes():
    model = hhc.patch(tiny_qwen3_next(seed=0))
    new_weights = tiny_qwen3_next(seed=1)
    store = new_store()
    run(model, store)
    for (_, param), (_, new_param) in zip(model.named_parameters(), new_weights.named_parameters()):
        param.data.copy_(new_param.data)
    output, cache = run(model, store)
    assert cache.num_cached_tokens == 0
    assert_same_as_cold(output, cold_generate(new_weights, PROMPT, max_new_tokens=3))
