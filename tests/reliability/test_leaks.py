"""200 requests through one store in one process: the live tensors (count and bytes) and the store's
bytes stay bounded once the store has filled up; nothing accumulates per request."""

import gc

import torch

import hf_hybrid_cache as hhc
from reliability_support import CheckedPrefixStore, assert_store_at_rest, generate, prompt_family

NUM_REQUESTS = 200
NUM_WARMUP = 40  # enough for the store to fill up and its pools to reach their final size
BLOCK_SIZE = 8


def live_tensors() -> tuple[int, int]:
    """(number of live tensor objects, bytes of their distinct storages)."""
    gc.collect()
    # type(), not isinstance(): the latter reads `__class__`, which some deprecated module proxies warn on.
    tensors = [obj for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor)]
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return len(tensors), sum(storages.values())


def test_many_requests_keep_tensors_and_store_bounded(model):
    probe = hhc.PrefixStore(block_size=BLOCK_SIZE)
    hhc.HybridPrefixCache(model, store=probe)
    # Too small for the prompts' working set: the store keeps evicting (and reallocating) to the end.
    store = CheckedPrefixStore(
        block_size=BLOCK_SIZE, mamba_cache_mode="all", max_bytes=8 * (probe.page_bytes + probe.snapshot_bytes)
    )
    prompts = prompt_family(5, prefix_len=16, tail_len=10, seed=80) + prompt_family(5, prefix_len=8, tail_len=19, seed=81)
    samples = {}
    for request_idx in range(NUM_REQUESTS):
        prompt = prompts[(request_idx * 7) % len(prompts)]
        cache = hhc.HybridPrefixCache(model, store=store)
        generate(model, prompt, cache, max_new_tokens=1 + request_idx % 2)
        del cache
        if request_idx + 1 in (NUM_WARMUP, NUM_REQUESTS):
            samples[request_idx + 1] = (*live_tensors(), store.stats())

    num_before, bytes_before, stats_before = samples[NUM_WARMUP]
    num_after, bytes_after, stats_after = samples[NUM_REQUESTS]
    def evicted(stats):  # blocks and snapshots alone
        return stats["evictions"] + stats["snapshot_evictions"]

    assert evicted(stats_after) > evicted(stats_before) and stats_after["hit_tokens"] > stats_before["hit_tokens"]
    # 160 more requests, each making and dropping dozens of tensors: a leak of even one per request shows.
    assert num_after <= num_before + 20, f"live tensors grew from {num_before} to {num_after}"
    assert bytes_after <= bytes_before + (64 << 10), f"live tensor bytes grew from {bytes_before} to {bytes_after}"
    assert stats_after["bytes_used"] <= store.max_bytes and store.peak_bytes <= store.max_bytes
    assert store.violations == []
    assert_store_at_rest(store)
