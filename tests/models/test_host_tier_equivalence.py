"""Hits served from the host tier equal cold runs, for every path's family kind and both policies; a saved
store holds its host-tier blocks too, and loads them back into a host tier."""

import pytest
from cold_oracle import assert_same_as_cold, cold_generate, generate, random_tokens

import hf_hybrid_cache as hhc
from hf_hybrid_cache.tiny import tiny_model

BLOCK_SIZE = 16
PROMPTS = [random_tokens(64, seed=40 + i) for i in range(4)]


def _block_bytes(model) -> int:
    probe = hhc.PrefixStore(block_size=BLOCK_SIZE)
    hhc.HybridPrefixCache(model, store=probe)
    return probe.page_bytes + probe.snapshot_bytes


@pytest.mark.parametrize("eviction", ["cost", "lru"])
@pytest.mark.parametrize("family", ["qwen3_next", "nemotron_h", "llama"])
def test_hits_from_the_host_tier_equal_cold(family, eviction, tmp_path):
    cold_model = tiny_model(family, seed=0)
    model = hhc.patch(tiny_model(family, seed=0))
    # The device tier holds about one request (mode align: 4 pages, snapshots at 48 and 64), the host tier all.
    store = hhc.PrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode="align", eviction=eviction,
                            max_bytes=5 * _block_bytes(model), host_bytes=40 * _block_bytes(model))
    for prompt in PROMPTS:
        generate(model, prompt[None], hhc.HybridPrefixCache(model, store=store))
    assert store.stats()["tiers"]["host"]["blocks"] > 0 and store.stats()["evictions"] == 0
    expected = 48  # the last boundary before the final prompt token, for every kind of model
    for prompt in PROMPTS:
        cache = hhc.HybridPrefixCache(model, store=store)
        output = generate(model, prompt[None], cache)
        assert cache.num_cached_tokens == expected
        assert_same_as_cold(output, cold_generate(cold_model, prompt[None]))
        store.check_invariants()
    assert store.stats()["tiers"]["device"]["promotions"] > 0

    store.save(tmp_path / "store.safetensors")
    loaded = hhc.PrefixStore.load(tmp_path / "store.safetensors", max_bytes=40 * _block_bytes(model), host_bytes=0)
    assert loaded.stats()["blocks"] == store.stats()["blocks"] and "host" not in loaded.stats()["tiers"]
    cache = hhc.HybridPrefixCache(model, store=loaded)
    output = generate(model, PROMPTS[0][None], cache)
    assert cache.num_cached_tokens == expected
    assert_same_as_cold(output, cold_generate(cold_model, PROMPTS[0][None]))

    restored = hhc.PrefixStore.load(tmp_path / "store.safetensors")  # both tiers, with the saved budgets
    restored.check_invariants()
    assert restored.stats()["blocks"] == store.stats()["blocks"] and restored.stats()["tiers"]["host"]["blocks"] > 0
    cache = hhc.HybridPrefixCache(model, store=restored)
    output = generate(model, PROMPTS[0][None], cache)  # the least recently used prompt: loaded into the host tier
    assert cache.num_cached_tokens == expected and restored.stats()["tiers"]["device"]["promotions"] > 0
    assert_same_as_cold(output, cold_generate(cold_model, PROMPTS[0][None]))
