"""A request never holds more than the store's budget plus two snapshots' worth of states: the snapshots it
takes go straight into slots reserved in the store (counted in the budget), and a long one-pass step
computes at most two states per recurrent layer per kernel call. When the budget is exhausted, saving stops
and the output still equals the cold run. Slots are counted here; nothing is timed or measured in RSS."""

import pytest
import torch

import hf_hybrid_cache as hhc
from hf_hybrid_cache import kernels
from reliability_support import CheckedPrefixStore, assert_same_as_cold, assert_store_at_rest, cold_generate, generate, random_tokens

BLOCK_SIZE = 8
PROMPT = random_tokens(400, seed=80)[None]  # 50 boundaries: far more snapshots than the budget holds


@pytest.fixture
def checkpoint_counts(monkeypatch):
    """The number of states each chunked kernel call computes besides its final state."""
    counts = []
    chunk = kernels.chunk_gated_delta_rule

    def counting(*args, checkpoint_offsets=(), **kwargs):
        counts.append(len(checkpoint_offsets))
        return chunk(*args, checkpoint_offsets=checkpoint_offsets, **kwargs)

    monkeypatch.setattr(kernels, "chunk_gated_delta_rule", counting)
    return counts


@pytest.mark.parametrize("mode", ["all", "branch", "align"])
def test_snapshots_stay_inside_the_budget(model, cold_model, checkpoint_counts, mode):
    probe = hhc.PrefixStore(block_size=BLOCK_SIZE)
    hhc.HybridPrefixCache(model, store=probe)
    budget_snapshots = 6
    max_bytes = budget_snapshots * probe.snapshot_bytes + 40 * probe.page_bytes
    store = CheckedPrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode=mode, max_bytes=max_bytes)
    cache = hhc.HybridPrefixCache(model, store=store)
    output = generate(model, PROMPT, cache, max_new_tokens=20)
    assert_same_as_cold(output, cold_generate(cold_model, PROMPT, max_new_tokens=20))

    # Every slot the request wrote was counted in the budget at the moment it was taken...
    assert store.violations == [] and store.peak_bytes <= max_bytes
    # ...and the states computed before reaching a slot never exceeded two per recurrent layer per call.
    num_recurrent = len(cache.layout.recurrent)
    assert cache.max_offsets_per_call == 2 * num_recurrent == 6
    assert max(checkpoint_counts) <= 2 * num_recurrent
    if mode == "all":
        assert sum(checkpoint_counts) > budget_snapshots * num_recurrent  # more states than the budget holds
    assert_store_at_rest(store)
    assert store.stats()["snapshots"] > 0 and store.stats()["bytes_used"] <= max_bytes


def test_a_budget_of_one_block_stops_saving_cleanly(model, cold_model):
    probe = hhc.PrefixStore(block_size=BLOCK_SIZE)
    hhc.HybridPrefixCache(model, store=probe)
    store = CheckedPrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode="all", max_bytes=probe.page_bytes + probe.snapshot_bytes)
    output = generate(model, PROMPT, hhc.HybridPrefixCache(model, store=store), max_new_tokens=5)
    assert_same_as_cold(output, cold_generate(cold_model, PROMPT, max_new_tokens=5))
    assert_store_at_rest(store)
    assert store.stats()["blocks"] <= 1 and store.violations == []


def test_under_pressure_a_request_gives_up_its_own_superseded_state_first(model, cold_model):
    """Mode branch, a full store: when a request's decode reaches a boundary, the state it saved before its
    final prompt token (which the new one supersedes on the same path) gives way, not another request's."""
    probe = hhc.PrefixStore(block_size=16)
    hhc.HybridPrefixCache(model, store=probe)
    # Exactly two snapshots, and the pages of both requests below.
    max_bytes = 2 * probe.snapshot_bytes + 5 * probe.page_bytes
    store = CheckedPrefixStore(block_size=16, mamba_cache_mode="branch", max_bytes=max_bytes)
    first, second = random_tokens(40, seed=81)[None], random_tokens(40, seed=82)[None]
    generate(model, first, hhc.HybridPrefixCache(model, store=store), max_new_tokens=1)  # saves its state at 32
    output = generate(model, second, hhc.HybridPrefixCache(model, store=store), max_new_tokens=10)  # 32, then 48
    assert_same_as_cold(output, cold_generate(cold_model, second, max_new_tokens=10))
    assert (store.stats()["snapshots"], store.stats()["evictions"] + store.stats()["snapshot_evictions"]) == (2, 0)
    for prompt, expected in ((first, 32), (torch.cat([output.sequences[0, :-1], random_tokens(5, seed=83)])[None], 48)):
        cache = hhc.HybridPrefixCache(model, store=store)
        generate(model, prompt, cache, max_new_tokens=1)
        assert cache.num_cached_tokens == expected
    assert_store_at_rest(store)
