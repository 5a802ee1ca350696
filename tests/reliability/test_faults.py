"""Faults in the middle of a request leave nothing partial behind: an exception or a KeyboardInterrupt
inside a layer (prefill or decode), or inside the publish itself, and a budget too small for what a
request would publish. Afterwards nothing is pinned, every slot belongs to a complete block, and later
hits still equal cold runs."""

import pytest
from transformers.generation.streamers import BaseStreamer

import hf_hybrid_cache as hhc
from reliability_support import (
    CheckedPrefixStore,
    LayerFault,
    assert_same_as_cold,
    assert_store_at_rest,
    cold_generate,
    generate,
    prompt_family,
)

BLOCK_SIZE = 16
MAX_NEW_TOKENS = 4
GDN_LAYER = 2  # the third GDN layer: layers 0 and 1 have already recorded their snapshots when it fails


class InjectedFault(RuntimeError):
    pass


def new_store(mode="all", max_bytes=64 << 20):
    return CheckedPrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode=mode, max_bytes=max_bytes)


def run(model, prompt, store, cache=None, **kwargs):
    cache = cache if cache is not None else hhc.HybridPrefixCache(model, store=store)
    kwargs.setdefault("max_new_tokens", MAX_NEW_TOKENS)
    return generate(model, prompt, cache, **kwargs), cache


@pytest.mark.parametrize("error", [InjectedFault("boom"), KeyboardInterrupt()], ids=["exception", "interrupt"])
@pytest.mark.parametrize("fail_on", [1, 3], ids=["mid-prefill", "mid-decode"])
def test_fault_inside_a_layer_publishes_nothing(model, cold_model, error, fail_on):
    store = new_store()
    seed_prompt, prompt = prompt_family(2, prefix_len=40, tail_len=30, seed=30)
    run(model, seed_prompt, store)
    keys_before = set(store.lru_keys())
    stats_before = store.stats()

    cache = hhc.HybridPrefixCache(model, store=store)
    with LayerFault(model.model.layers[GDN_LAYER].linear_attn, error, fail_on) as fault:
        with pytest.raises(type(error)):
            run(model, prompt, store, cache)
    assert fault.num_calls == fail_on
    assert set(store.lru_keys()) == keys_before, "a failed request must not publish"
    assert store.stats()["queries"] == stats_before["queries"] + 1  # it was served (a hit was pinned)
    assert store.stats()["hit_tokens"] > stats_before["hit_tokens"]
    assert_store_at_rest(store)
    assert cache.get_seq_length() == 0 and cache.num_cached_tokens == 0  # the half-run state is dropped

    cold = cold_generate(cold_model, prompt, max_new_tokens=MAX_NEW_TOKENS)
    # The failed cache is reusable and hits the seed prompt's blocks; then a fresh one hits the prompt's own.
    for expected_cached in (32, 64):
        output, cache = run(model, prompt, store, cache)
        assert_same_as_cold(output, cold)
        assert cache.num_cached_tokens == expected_cached
        cache = None
    assert_store_at_rest(store)
    assert store.violations == []


class FailingRestoreStore(CheckedPrefixStore):
    """Raises `error` once, when a hit's snapshot is read (its blocks are pinned by then)."""

    def __init__(self, error, **kwargs):
        super().__init__(**kwargs)
        self.error, self.armed = error, False

    def read_snapshot(self, hit):
        if self.armed:
            self.armed = False
            raise self.error
        return super().read_snapshot(hit)


@pytest.mark.parametrize("error", [InjectedFault("read failed"), KeyboardInterrupt()], ids=["exception", "interrupt"])
def test_fault_while_restoring_a_hit_releases_it(model, cold_model, error):
    store = FailingRestoreStore(error, block_size=BLOCK_SIZE, mamba_cache_mode="all", max_bytes=64 << 20)
    prompt = prompt_family(1, prefix_len=40, tail_len=30, seed=34)[0]
    run(model, prompt, store)
    keys = store.lru_keys()
    store.armed = True
    cache = hhc.HybridPrefixCache(model, store=store)
    with pytest.raises(type(error)):
        run(model, prompt, store, cache)
    assert store.stats()["queries"] == 2 and sorted(store.lru_keys()) == sorted(keys)
    assert_store_at_rest(store)
    output, cache = run(model, prompt, store, cache)
    assert_same_as_cold(output, cold_generate(cold_model, prompt, max_new_tokens=MAX_NEW_TOKENS))
    assert cache.num_cached_tokens == 64
    assert store.violations == []


class FailingPublishStore(CheckedPrefixStore):
    """Raises `error` while writing the page of block `fail_block` of a publish."""

    def __init__(self, error, fail_block, **kwargs):
        super().__init__(**kwargs)
        self.error, self.fail_block = error, fail_block
        self.armed = False

    def publish(self, keys, write_page, snapshots):
        if not self.armed:
            return super().publish(keys, write_page, snapshots)
        self.armed = False

        def failing_write_page(block_idx, views):
            write_page(block_idx, views)  # a half-written slot: filled, then the fault
            if block_idx == self.fail_block:
                raise self.error

        return super().publish(keys, failing_write_page, snapshots)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), InjectedFault("disk full")], ids=["interrupt", "exception"])
def test_fault_inside_publish_leaves_only_complete_blocks(model, cold_model, error):
    store = FailingPublishStore(error, fail_block=2, block_size=BLOCK_SIZE, mamba_cache_mode="all", max_bytes=64 << 20)
    prompt = prompt_family(1, prefix_len=40, tail_len=30, seed=31)[0]  # 70 tokens + 3 decoded: 4 blocks
    cold = cold_generate(cold_model, prompt, max_new_tokens=MAX_NEW_TOKENS)
    store.armed = True
    cache = hhc.HybridPrefixCache(model, store=store)
    if isinstance(error, Exception):
        # generate's output is already correct when publishing fails: it is returned, with a warning.
        with pytest.warns(UserWarning, match="publishing to the prefix store failed.*disk full"):
            output, _ = run(model, prompt, store, cache)
        assert_same_as_cold(output, cold)
    else:
        with pytest.raises(type(error)):
            run(model, prompt, store, cache)
    assert store.violations == []
    assert_store_at_rest(store)  # the snapshots reserved for blocks 2 and 3 went back
    assert (store.stats()["blocks"], store.stats()["snapshots"]) == (2, 2)

    for expected_cached in (32, 64):  # the surviving blocks, then the repaired chain
        output, cache = run(model, prompt, store)
        assert_same_as_cold(output, cold)
        assert cache.num_cached_tokens == expected_cached
    assert_store_at_rest(store)


class FailingSnapshotStore(CheckedPrefixStore):
    """Raises `error` the `fail_on`-th time a request asks for a reserved snapshot slot's views (while a
    layer or the step hook writes a state into it)."""

    def __init__(self, error, fail_on, **kwargs):
        super().__init__(**kwargs)
        self.error, self.fail_on, self.num_calls, self.armed = error, fail_on, 0, False

    def snapshot_views(self, slot_id):
        if self.armed:
            self.num_calls += 1
            if self.num_calls == self.fail_on:
                raise self.error
        return super().snapshot_views(slot_id)


@pytest.mark.parametrize("error", [InjectedFault("write failed"), KeyboardInterrupt()], ids=["exception", "interrupt"])
def test_fault_while_writing_a_snapshot_releases_the_reserved_slots(model, cold_model, error):
    store = FailingSnapshotStore(error, fail_on=4, block_size=BLOCK_SIZE, mamba_cache_mode="all", max_bytes=64 << 20)
    prompt = prompt_family(1, prefix_len=40, tail_len=30, seed=35)[0]
    store.armed = True
    with pytest.raises(type(error)):
        run(model, prompt, store)
    assert store.stats()["blocks"] == 0  # a failed request publishes nothing
    assert_store_at_rest(store)  # and every slot it had reserved is free again
    store.armed = False
    output, cache = run(model, prompt, store)
    assert_same_as_cold(output, cold_generate(cold_model, prompt, max_new_tokens=MAX_NEW_TOKENS))
    assert store.violations == []


class NestedRun(BaseStreamer):
    """Runs `request()` from inside generate, on the first generated token: the outer request is live
    (its hit pinned) while the inner one runs."""

    def __init__(self, request):
        self.request, self.num_puts, self.result = request, 0, None

    def put(self, value):
        self.num_puts += 1
        if self.num_puts == 2:  # put #1 is the prompt
            self.result = self.request()

    def end(self):
        pass


def test_out_of_budget_publishes_what_fits_and_never_evicts_a_pinned_block(model, cold_model):
    probe = hhc.PrefixStore(block_size=BLOCK_SIZE)
    hhc.HybridPrefixCache(model, store=probe)
    one_block = probe.page_bytes + probe.snapshot_bytes
    store = new_store(max_bytes=one_block)  # the smallest budget accepted
    first, second = prompt_family(2, prefix_len=40, tail_len=30, seed=32)
    other = prompt_family(1, prefix_len=40, tail_len=30, seed=33)[0]
    colds = {name: cold_generate(cold_model, p, max_new_tokens=MAX_NEW_TOKENS) for name, p in
             (("first", first), ("second", second), ("other", other))}

    output, _ = run(model, first, store)
    assert_same_as_cold(output, colds["first"])
    assert store.stats()["blocks"] == 1  # block 1 did not fit: block 0 was pinned by the publish itself
    first_block = store.lru_keys()[0]

    # While `second` holds block 0 (its hit), `other` finds the budget full of pinned data: it runs
    # exactly, publishes nothing, and block 0 survives.
    nested = NestedRun(lambda: run(model, other, store))
    outer_cache = hhc.HybridPrefixCache(model, store=store)
    outer = generate(model, second, outer_cache, max_new_tokens=MAX_NEW_TOKENS, streamer=nested)
    assert nested.result is not None
    inner_output, inner_cache = nested.result
    assert outer_cache.num_cached_tokens == BLOCK_SIZE and inner_cache.num_cached_tokens == 0
    assert_same_as_cold(outer, colds["second"])
    assert_same_as_cold(inner_output, colds["other"])
    assert store.lru_keys() == [first_block]
    assert_store_at_rest(store)

    # Unpinned, block 0 makes way for the next request's blocks.
    output, _ = run(model, other, store)
    assert_same_as_cold(output, colds["other"])
    assert store.lru_keys() != [first_block] and store.stats()["blocks"] == 1
    assert_store_at_rest(store)
    assert store.violations == []
