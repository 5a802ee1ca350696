"""Property-based churn: random sequences of requests (shared prefixes, repeats, multi-turn follow-ups
on a new or the same cache) over random modes, eviction policies, block sizes, budgets and host tiers. After every request: the output
equals its cold run, the store's invariants hold, nothing is pinned, and the request's chain is the most
recently used, ancestors first."""

from collections import Counter

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import hf_hybrid_cache as hhc
from hf_hybrid_cache.store.hashing import block_keys
from reliability_support import CheckedPrefixStore, assert_same_as_cold, assert_store_at_rest, cold_generate, generate, random_tokens

BASES = [random_tokens(64, seed=60 + i) for i in range(2)]

step_strategy = st.fixed_dictionaries(
    dict(
        kind=st.sampled_from(["fresh", "follow-up", "same-cache"]),
        base=st.integers(0, len(BASES) - 1),
        prefix_len=st.sampled_from([40, 17, 64, 0]),
        tail_seed=st.integers(0, 2),
        tail_len=st.sampled_from([9, 1, 30]),
        max_new_tokens=st.integers(1, 3),
    )
)
scenario_strategy = st.fixed_dictionaries(
    dict(
        # The first value is what a minimal example takes: a mode that caches, a budget that evicts.
        mode=st.sampled_from(["all", "branch", "align", "none"]),
        eviction=st.sampled_from(["cost", "lru"]),
        block_size=st.sampled_from([16, 8, 24]),
        budget_blocks=st.sampled_from([3, 1, 6, 40]),
        host_blocks=st.sampled_from([0, 4, 1]),
        steps=st.lists(step_strategy, min_size=3, max_size=6),
    )
)


def step(kind, base=0, prefix_len=64, tail_seed=0, tail_len=30, max_new_tokens=3):
    return dict(kind=kind, base=base, prefix_len=prefix_len, tail_seed=tail_seed, tail_len=tail_len, max_new_tokens=max_new_tokens)


# Scenarios every run covers, whatever hypothesis draws: chats and shared prefixes under a tight budget,
# where the cost policy evicts snapshots apart from their pages.
PRESSURE = [step("fresh"), step("follow-up"), step("fresh", tail_seed=1), step("fresh", base=1), step("fresh", tail_seed=2)]


def one_block_bytes(model, block_size, _sizes={}):
    if block_size not in _sizes:
        probe = hhc.PrefixStore(block_size=block_size)
        hhc.HybridPrefixCache(model, store=probe)
        _sizes[block_size] = probe.page_bytes + probe.snapshot_bytes
    return _sizes[block_size]


def test_random_churn_equals_cold_and_keeps_invariants(model, cold_model):
    cold_runs = {}
    totals = Counter()

    def cold(prompt, max_new_tokens):
        key = (tuple(prompt[0].tolist()), max_new_tokens)
        if key not in cold_runs:
            cold_runs[key] = cold_generate(cold_model, prompt, max_new_tokens=max_new_tokens)
        return cold_runs[key]

    @settings(max_examples=50, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(scenario=scenario_strategy)
    @example(scenario=dict(mode="branch", eviction="cost", block_size=16, budget_blocks=3, host_blocks=0, steps=PRESSURE))
    @example(scenario=dict(mode="all", eviction="cost", block_size=8, budget_blocks=6, host_blocks=0, steps=PRESSURE))
    @example(scenario=dict(mode="all", eviction="cost", block_size=8, budget_blocks=3, host_blocks=4, steps=PRESSURE))
    @example(scenario=dict(mode="branch", eviction="lru", block_size=16, budget_blocks=3, host_blocks=2, steps=PRESSURE))
    def churn(scenario):
        block_size, mode = scenario["block_size"], scenario["mode"]
        max_bytes = scenario["budget_blocks"] * one_block_bytes(model, block_size)
        store = CheckedPrefixStore(
            block_size=block_size, mamba_cache_mode=mode, max_bytes=max_bytes, eviction=scenario["eviction"],
            host_bytes=scenario["host_blocks"] * one_block_bytes(model, block_size),
        )
        previous, previous_cache = None, None
        for step in scenario["steps"]:
            tail = random_tokens(step["tail_len"], seed=70 + step["tail_seed"])
            if step["kind"] != "fresh" and previous is not None:
                prompt = torch.cat([previous[0], tail])[None]
            else:
                prompt = torch.cat([BASES[step["base"]][: step["prefix_len"]], tail])[None]
            reuse = step["kind"] == "same-cache" and previous_cache is not None
            cache = previous_cache if reuse else hhc.HybridPrefixCache(model, store=store)
            output = generate(model, prompt, cache, max_new_tokens=step["max_new_tokens"])
            assert_same_as_cold(output, cold(prompt, step["max_new_tokens"]))

            assert store.violations == []
            assert_store_at_rest(store)
            assert cache.num_cached_tokens % block_size == 0 and cache.num_cached_tokens < prompt.shape[1]
            lru = store.lru_keys()
            if mode == "none":
                assert lru == [] and cache.num_cached_tokens == 0
            else:
                # The chain this request touched last: its longest stored prefix, touched deepest first.
                keys = block_keys(cache._root, output.sequences[0, : cache.get_seq_length()], block_size)
                stored = [key for key in keys[: len(lru)] if key in set(lru)]
                chain = keys[: next((i for i, key in enumerate(keys) if key not in set(lru)), len(keys))]
                assert stored[: len(chain)] == chain
                assert lru[len(lru) - len(chain) :] == chain[::-1]
            totals["hit_tokens"] += cache.num_cached_tokens
            totals["steps"] += 1
            previous, previous_cache = output.sequences, cache
        totals["evictions"] += store.stats()["evictions"]
        totals["snapshot_evictions"] += store.stats()["snapshot_evictions"]
        if "host" in store.stats()["tiers"]:
            totals["demotions"] += store.stats()["tiers"]["device"]["demotions"]
            totals["promotions"] += store.stats()["tiers"]["device"]["promotions"]

    churn()
    # The scenarios must have exercised hits and both kinds of eviction, or this test proves little.
    assert totals["hit_tokens"] > 0 and totals["evictions"] > 0 and totals["snapshot_evictions"] > 0, totals
    assert totals["demotions"] > 0 and totals["promotions"] > 0, totals
