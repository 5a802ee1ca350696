"""The host tier on the synthetic layout: device victims move down instead of being dropped, hits bring them
back, a full host tier drops, a slot another request may be reading never moves."""

import pytest
from test_prefix_store import BLOCK_SIZE, LAYOUT, PAGE_BYTES, SNAPSHOT_BYTES, lookup, publish

from hf_hybrid_cache.store.prefix_store import PrefixStore

BLOCK_BYTES = PAGE_BYTES + SNAPSHOT_BYTES


def make_tiered(device_blocks, host_blocks, eviction="cost"):
    store = PrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode="all", max_bytes=device_blocks * BLOCK_BYTES,
                        eviction=eviction, host_bytes=host_blocks * BLOCK_BYTES)
    store.bind(LAYOUT)
    return store


def prompt(first_token):
    """One block whose page is filled with `first_token` and snapshot with -first_token (`publish`)."""
    return [first_token] * BLOCK_SIZE + [0]


def assert_served(store, first_token):
    hit = lookup(store, prompt(first_token))
    try:
        assert len(hit.blocks) == 1
        keys, values = store.read_pages(hit)[0]
        assert keys.eq(first_token).all() and values.eq(first_token).all()
        assert all(state.eq(-first_token).all() for state in store.read_snapshot(hit))
    finally:
        store.release(hit)
    store.check_invariants()


@pytest.mark.parametrize("eviction", ["cost", "lru"])
def test_device_victims_move_to_host_and_come_back_on_a_hit(eviction):
    store = make_tiered(device_blocks=2, host_blocks=4, eviction=eviction)
    for token in (11, 12, 13):
        publish(store, prompt(token))
    store.check_invariants()
    tiers = store.stats()["tiers"]
    assert (tiers["device"]["blocks"], tiers["host"]["blocks"]) == (2, 1)
    assert tiers["device"]["demotions"] == 2 and store.stats()["evictions"] == 0  # page + snapshot of block 11
    assert_served(store, 11)
    tiers = store.stats()["tiers"]
    assert tiers["device"]["promotions"] == 2 and tiers["host"]["blocks"] == 1  # 11 came back, 12 went down
    for token in (11, 12, 13):
        assert_served(store, token)


def test_a_full_host_tier_drops_what_it_evicts():
    store = make_tiered(device_blocks=2, host_blocks=1)
    for token in (11, 12, 13, 14):
        publish(store, prompt(token))
    store.check_invariants()
    stats = store.stats()
    assert (stats["tiers"]["device"]["blocks"], stats["tiers"]["host"]["blocks"], stats["evictions"]) == (2, 1, 1)
    assert len(lookup(store, prompt(11)).blocks) == 0


def test_a_hit_that_cannot_come_back_is_read_from_host():
    store = make_tiered(device_blocks=1, host_blocks=4)
    publish(store, prompt(11))
    publish(store, prompt(12))  # 11 moves to host
    held = lookup(store, prompt(12))  # pinned: 11 cannot take its place
    try:
        assert_served(store, 11)
        assert store.stats()["tiers"]["device"]["promotions"] == 0
    finally:
        store.release(held)
    assert_served(store, 11)
    assert store.stats()["tiers"]["device"]["promotions"] == 2


def test_a_block_another_request_holds_never_moves():
    store = make_tiered(device_blocks=1, host_blocks=4)
    publish(store, prompt(11))
    publish(store, prompt(12))
    blocker = lookup(store, prompt(12))
    first = lookup(store, prompt(11))  # stays on host: no room
    store.release(blocker)
    second = lookup(store, prompt(11))  # room now, but `first` may be reading the host slot
    assert store.stats()["tiers"]["device"]["promotions"] == 0
    store.release(first)
    store.release(second)
    store.check_invariants()


@pytest.mark.parametrize("host_bytes", [-1, 1.5, True, "1"])
def test_host_bytes_must_be_a_non_negative_int(host_bytes):
    with pytest.raises(ValueError, match="host_bytes must be an int >= 0"):
        PrefixStore(host_bytes=host_bytes)
