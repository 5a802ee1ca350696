"""Four threads generating through one store under a budget that forces eviction: outputs equal serial
cold runs, the budget holds at every allocation, and every pin is released at the end."""

import threading

import pytest

import hf_hybrid_cache as hhc
from reliability_support import (
    CheckedPrefixStore,
    assert_same_as_cold,
    assert_store_at_rest,
    cold_generate,
    generate,
    prompt_family,
)

NUM_THREADS = 4
BLOCK_SIZE = 16
MAX_NEW_TOKENS = 3


def block_bytes(model, block_size: int) -> tuple[int, int]:
    probe = hhc.PrefixStore(block_size=block_size)
    hhc.HybridPrefixCache(model, store=probe)
    return probe.page_bytes, probe.snapshot_bytes


@pytest.mark.parametrize("mode", ["align", "all"])
def test_threads_share_one_store_under_eviction(model, cold_model, mode):
    page_bytes, snapshot_bytes = block_bytes(model, BLOCK_SIZE)
    # Room for 6 blocks with snapshots: far less than the 4 threads' 8 distinct prompts publish.
    store = CheckedPrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode=mode, max_bytes=6 * (page_bytes + snapshot_bytes))
    prompts = prompt_family(4, prefix_len=40, tail_len=30, seed=20) + prompt_family(4, prefix_len=56, tail_len=20, seed=21)
    cold = [cold_generate(cold_model, prompt, max_new_tokens=MAX_NEW_TOKENS) for prompt in prompts]
    # Each thread runs 4 prompts from both families, in its own order: hits, misses and evictions interleave.
    plans = [[(t + 3 * i) % len(prompts) for i in range(4)] for t in range(NUM_THREADS)]
    results: dict[tuple[int, int], object] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(NUM_THREADS)

    def worker(thread_idx: int) -> None:
        try:
            barrier.wait()
            for step, prompt_idx in enumerate(plans[thread_idx]):
                cache = hhc.HybridPrefixCache(model, store=store)
                output = generate(model, prompts[prompt_idx], cache, max_new_tokens=MAX_NEW_TOKENS)
                results[thread_idx, step] = (prompt_idx, output, cache.num_cached_tokens)
        except BaseException as error:  # noqa: BLE001 - re-raised in the main thread below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(NUM_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors, f"worker threads raised: {errors!r}"
    assert store.violations == []
    assert len(results) == NUM_THREADS * 4
    for prompt_idx, output, _ in results.values():
        assert_same_as_cold(output, cold[prompt_idx])
    stats = store.stats()
    assert stats["evictions"] > 0, "the budget must force eviction for this test to mean anything"
    assert stats["hit_tokens"] > 0 and any(num_cached for _, _, num_cached in results.values())
    assert store.num_checks >= 2 * len(results) and 0 < store.peak_bytes <= store.max_bytes
    assert_store_at_rest(store)
