"""Four threads generating through one store under a budget that forces eviction, while a fifth thread's
requests keep failing mid-prefill (and batches beside single requests): outputs equal serial cold runs, the
budget holds at every allocation, and every pin is released at the end."""

import threading

import pytest
import torch

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
NUM_STEPS = 6  # requests per thread
BLOCK_SIZE = 16
MAX_NEW_TOKENS = 3
FAILING_LAYER = 2
SEEDED = 0  # the prompt published before the threads start


class FaultInFailingThread(RuntimeError):
    pass


def block_bytes(model, block_size: int) -> tuple[int, int]:
    probe = hhc.PrefixStore(block_size=block_size)
    hhc.HybridPrefixCache(model, store=probe)
    return probe.page_bytes, probe.snapshot_bytes


@pytest.mark.parametrize(
    "mode, eviction, host_blocks",
    [("align", "lru", 0), ("all", "cost", 0), ("branch", "cost", 0), ("all", "cost", 4), ("branch", "lru", 2)],
)
def test_threads_share_one_store_under_eviction(model, cold_model, mode, eviction, host_blocks):
    page_bytes, snapshot_bytes = block_bytes(model, BLOCK_SIZE)
    # Room for 6 blocks with snapshots: far less than the 8 distinct prompts publish.
    store = CheckedPrefixStore(
        block_size=BLOCK_SIZE, mamba_cache_mode=mode, max_bytes=6 * (page_bytes + snapshot_bytes), eviction=eviction,
        host_bytes=host_blocks * (page_bytes + snapshot_bytes),
    )
    prompts = prompt_family(4, prefix_len=40, tail_len=30, seed=20) + prompt_family(4, prefix_len=56, tail_len=20, seed=21)
    cold = [cold_generate(cold_model, prompt, max_new_tokens=MAX_NEW_TOKENS) for prompt in prompts]
    # Each thread runs NUM_STEPS prompts from both families, in its own order: hits, misses and evictions interleave.
    plans = [[(t + 3 * i) % len(prompts) for i in range(NUM_STEPS)] for t in range(NUM_THREADS)]
    results: dict[tuple[int, int], object] = {}
    first_requests: dict[int, object] = {}
    generate(model, prompts[SEEDED], hhc.HybridPrefixCache(model, store=store), max_new_tokens=MAX_NEW_TOKENS)
    errors: list[BaseException] = []
    barrier = threading.Barrier(NUM_THREADS + 1)
    lock = threading.Lock()
    in_flight = {"now": 0, "max": 0, "failed": 0}

    def run(prompt_idx):
        cache = hhc.HybridPrefixCache(model, store=store)
        with lock:
            in_flight["now"] += 1
            in_flight["max"] = max(in_flight["max"], in_flight["now"])
        output = generate(model, prompts[prompt_idx], cache, max_new_tokens=MAX_NEW_TOKENS)
        with lock:
            in_flight["now"] -= 1
        return prompt_idx, output, cache.num_cached_tokens

    def worker(thread_idx: int) -> None:
        try:
            barrier.wait()
            # Phase 1: every thread is served the seeded prompt's blocks at once (nothing else is published yet).
            first_requests[thread_idx] = run(SEEDED)
            barrier.wait()
            # Phase 2: churn.
            for step, prompt_idx in enumerate(plans[thread_idx]):
                results[thread_idx, step] = run(prompt_idx)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread below
            errors.append(error)
            barrier.abort()

    def failing_worker() -> None:
        for step in range(NUM_STEPS):
            if step < 2:
                barrier.wait()  # fails in phase 1 too, while the others hold the seeded blocks
            try:
                generate(model, prompts[(SEEDED + step) % len(prompts)], hhc.HybridPrefixCache(model, store=store))
            except FaultInFailingThread:
                in_flight["failed"] += 1

    def fail_in_failing_thread(module, args):
        if threading.current_thread() is failing_thread:
            raise FaultInFailingThread("injected")

    failing_thread = threading.Thread(target=failing_worker)
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(NUM_THREADS)] + [failing_thread]
    handle = model.model.layers[FAILING_LAYER].register_forward_pre_hook(fail_in_failing_thread)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        handle.remove()

    assert not errors, f"worker threads raised: {errors!r}"
    assert store.violations == []
    assert len(results) == NUM_THREADS * NUM_STEPS and in_flight["failed"] == NUM_STEPS
    assert in_flight["max"] > 1, "the requests never overlapped"
    for prompt_idx, output, _ in results.values():
        assert_same_as_cold(output, cold[prompt_idx])
    stats = store.stats()
    assert stats["evictions"] > 0, "the budget must force eviction for this test to mean anything"
    if host_blocks:  # (whether a demoted block is hit again depends on the interleaving: not asserted)
        assert stats["tiers"]["device"]["demotions"] > 0, stats["tiers"]
    for prompt_idx, output, num_cached in first_requests.values():
        assert_same_as_cold(output, cold[prompt_idx])
        assert num_cached == 64  # the seeded prompt's last boundary before its final token
    assert len(first_requests) == NUM_THREADS
    assert store.num_checks >= 2 * len(results) and 0 < store.peak_bytes <= store.max_bytes
    assert_store_at_rest(store)


def test_batches_and_single_requests_share_one_store(model, cold_model):
    """Two threads generating batches (repeated prompts, rows sharing a prefix) and two generating one prompt at
    a time, through one store that must evict: every output equals cold, and the store is at rest after."""
    page_bytes, snapshot_bytes = block_bytes(model, BLOCK_SIZE)
    store = CheckedPrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode="branch", max_bytes=5 * (page_bytes + snapshot_bytes))
    prompts = [prompt[0] for prompt in prompt_family(4, prefix_len=40, tail_len=30, seed=22)]
    batch = torch.stack([prompts[0], prompts[1], prompts[0], prompts[2]])  # same length: no padding needed
    cold_batch = cold_model.generate(batch, attention_mask=torch.ones_like(batch), max_new_tokens=MAX_NEW_TOKENS,
                                     do_sample=False, pad_token_id=0)
    cold = [cold_generate(cold_model, prompt[None], max_new_tokens=MAX_NEW_TOKENS) for prompt in prompts]
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def batches():
        barrier.wait()
        for _ in range(NUM_STEPS // 2):
            output = model.generate(batch, attention_mask=torch.ones_like(batch), past_key_values=hhc.HybridPrefixCache(model, store=store),
                                    max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=0)
            assert torch.equal(output, cold_batch)

    def singles(offset):
        barrier.wait()
        for step in range(NUM_STEPS):
            idx = (offset + step) % len(prompts)
            output = generate(model, prompts[idx][None], hhc.HybridPrefixCache(model, store=store), max_new_tokens=MAX_NEW_TOKENS)
            assert_same_as_cold(output, cold[idx])

    def guarded(target, *args):
        try:
            target(*args)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(batches,)) for _ in range(2)]
    threads += [threading.Thread(target=guarded, args=(singles, offset)) for offset in (0, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert_store_at_rest(store)
    stats = store.stats()
    assert stats["evictions"] + stats["snapshot_evictions"] > 0 and stats["hit_tokens"] > 0
