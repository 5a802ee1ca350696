"""PrefixStore on a synthetic two-layer layout: shared pages, pins, both eviction policies, budget,
snapshots reserved by requests."""

import pytest
import torch

from hf_hybrid_cache.layout import LayerSpec, ModelLayout, StateSpec, TensorSpec
from hf_hybrid_cache.store.hashing import block_keys, root_key
from hf_hybrid_cache.store.prefix_store import PrefixStore

CPU = torch.device("cpu")
ATTENTION = LayerSpec(1, kv=(TensorSpec((1, 2), torch.float32, CPU),) * 2, states=())
RECURRENT = LayerSpec(
    0,
    kv=None,
    states=(
        StateSpec("conv", 0, TensorSpec((3, 2), torch.float32, CPU)),
        StateSpec("recurrent", 0, TensorSpec((1, 2, 2), torch.float32, CPU)),
    ),
)
LAYOUT = ModelLayout(model_type="synthetic", num_layers=2, layers=(RECURRENT, ATTENTION))
BLOCK_SIZE = 4
# block_size 4: a page is 2 * 1 * 4 * 2 fp32 = 64 bytes, a snapshot 3*2*4 + 1*2*2*4 = 40 bytes.
PAGE_BYTES, SNAPSHOT_BYTES = 64, 40
ROOT = root_key(b"synthetic", None)


def make_store(max_bytes=1 << 20, mode="all", eviction="cost"):
    store = PrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode=mode, max_bytes=max_bytes, eviction=eviction)
    store.bind(LAYOUT)
    return store


def publish(store, tokens, snapshot_blocks=None):
    """Publish `tokens` as a request does: snapshots first written into reserved slots (filled with -the
    block's first token id), then the pages (filled with that id)."""
    token_ids = torch.tensor(tokens)
    keys = block_keys(ROOT, token_ids, BLOCK_SIZE)

    def write_page(block_idx, views):
        for view in views:  # keys and values of each attention layer
            view.fill_(float(token_ids[block_idx * BLOCK_SIZE]))

    snapshots = {}
    for block_idx in range(len(keys)) if snapshot_blocks is None else snapshot_blocks:
        slot_id = store.reserve_snapshot()
        if slot_id is not None:
            for view in store.snapshot_views(slot_id):
                view.fill_(-float(token_ids[block_idx * BLOCK_SIZE]))
            snapshots[block_idx] = slot_id
    return store.publish(keys, write_page, snapshots)


def lookup(store, tokens):
    return store.lookup(block_keys(ROOT, torch.tensor(tokens), BLOCK_SIZE), num_query_tokens=len(tokens))


def test_sizes_of_the_synthetic_layout():
    store = make_store()
    assert (store.page_bytes, store.snapshot_bytes) == (PAGE_BYTES, SNAPSHOT_BYTES)


def test_common_prefix_shares_pages():
    store = make_store()
    assert publish(store, list(range(12))) == 3
    assert publish(store, list(range(8)) + [50, 51, 52, 53]) == 1  # two blocks reused, one new
    assert store.stats()["blocks"] == 4
    assert store.stats()["bytes_used"] == 4 * PAGE_BYTES + 4 * SNAPSHOT_BYTES


def test_lookup_returns_content_and_stops_at_last_snapshot():
    store = make_store()
    publish(store, list(range(100, 112)), snapshot_blocks=[0])  # only the first block has a state
    hit = lookup(store, list(range(100, 112)))
    assert len(hit.blocks) == 1
    keys, values = store.read_pages(hit)[0]
    assert keys.shape == values.shape == (1, BLOCK_SIZE, 2)
    assert bool((keys == 100).all()) and bool((values == 100).all())
    conv, recurrent = store.read_snapshot(hit)
    assert bool((conv == -100).all()) and bool((recurrent == -100).all())
    assert store.stats()["hit_tokens"] == BLOCK_SIZE and store.stats()["query_tokens"] == 12
    store.release(hit)


def test_pins_count_and_release():
    store = make_store()
    publish(store, list(range(8)))
    first, second = lookup(store, list(range(8))), lookup(store, list(range(8)))
    assert [block.num_pins for block in first.blocks] == [2, 2]
    store.release(first)
    assert [block.num_pins for block in second.blocks] == [1, 1]
    store.release(second)
    assert store.stats()["pinned_blocks"] == 0


def test_lru_order_and_eviction_of_least_recent_leaf():
    # Room for exactly three blocks with snapshots.
    store = make_store(max_bytes=3 * (PAGE_BYTES + SNAPSHOT_BYTES), eviction="lru")
    publish(store, [1] * 4)
    publish(store, [2] * 4)
    publish(store, [3] * 4)
    store.release(lookup(store, [1] * 4 + [0]))  # touch the first: the second is now least recent
    order = store.lru_keys()
    assert order[0] == block_keys(ROOT, torch.tensor([2] * 4), BLOCK_SIZE)[0]
    publish(store, [4] * 4)
    remaining = {key for key in store.lru_keys()}
    assert block_keys(ROOT, torch.tensor([2] * 4), BLOCK_SIZE)[0] not in remaining
    assert len(remaining) == 3 and store.stats()["evictions"] == 1


def test_pinned_blocks_are_never_evicted_and_budget_holds():
    store = make_store(max_bytes=2 * (PAGE_BYTES + SNAPSHOT_BYTES))
    publish(store, [1] * 8)  # fills the budget
    hit = lookup(store, [1] * 8 + [0])
    assert publish(store, [2] * 4) == 0  # nothing evictable: publishing stops, nothing half-made
    assert store.stats()["blocks"] == 2 and store.stats()["bytes_used"] <= store.max_bytes
    store.release(hit)
    assert publish(store, [2] * 4) == 1
    assert store.stats()["bytes_used"] <= store.max_bytes


def test_chain_is_evicted_from_its_tail():
    store = make_store(max_bytes=2 * PAGE_BYTES + 2 * SNAPSHOT_BYTES, eviction="lru")
    publish(store, [5] * 8)  # two blocks, two snapshots: budget full
    store.release(lookup(store, [5] * 8 + [0]))
    # The parent is more recent than its child (touched deepest first); the leaf goes first.
    publish(store, [6] * 4, snapshot_blocks=[])
    assert store.stats()["blocks"] == 2 and store.stats()["evictions"] == 1
    assert lookup(store, [5] * 8 + [0]).blocks[0].key == block_keys(ROOT, torch.tensor([5] * 4), BLOCK_SIZE)[0]


def test_clear_keeps_pinned_blocks():
    store = make_store()
    publish(store, [1] * 8)
    publish(store, [2] * 4)
    hit = lookup(store, [1] * 8 + [0])
    store.clear()
    assert store.stats()["blocks"] == 2 and store.stats()["evictions"] == 0
    store.release(hit)
    store.clear()
    assert store.stats()["blocks"] == 0 and store.stats()["bytes_used"] == 0


def test_failed_write_leaves_nothing_behind():
    store = make_store()

    def broken_write(block_idx, views):
        raise RuntimeError("device error")

    keys = block_keys(ROOT, torch.arange(8), BLOCK_SIZE)
    with pytest.raises(RuntimeError):
        store.publish(keys, broken_write, {})
    assert store.stats()["blocks"] == 0 and store.stats()["bytes_used"] == 0


def test_budget_smaller_than_one_block_names_the_size():
    store = PrefixStore(block_size=BLOCK_SIZE, max_bytes=50)
    with pytest.raises(ValueError, match=f"max_bytes >= {PAGE_BYTES + SNAPSHOT_BYTES}"):
        store.bind(LAYOUT)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(block_size=0), "block_size"),
        (dict(block_size=2.5), "block_size"),
        (dict(mamba_cache_mode="sometimes"), "mamba_cache_mode"),
        (dict(max_bytes=-1), "max_bytes"),
    ],
    ids=["block_size-zero", "block_size-float", "mode-unknown", "max_bytes-negative"],
)
def test_invalid_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrefixStore(**kwargs)


def test_other_layout_is_refused():
    store = make_store()
    other = ModelLayout("synthetic", 2, (ATTENTION,))
    with pytest.raises(ValueError, match="its own store"):
        store.bind(other)


def test_pool_grows_and_keeps_contents():
    store = make_store()
    for i in range(40):  # beyond the pool's initial 16 slots
        publish(store, [i + 10] * 4)
    hit = lookup(store, [10] * 4 + [0])
    assert bool((store.read_pages(hit)[0][0] == 10).all())
    store.release(hit)
    assert store.stats()["blocks"] == 40


def test_attention_only_layout_hits_every_block_without_snapshots():
    """A model without recurrent layers needs no state: every complete block is a hit point."""
    store = PrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode="none")
    store.bind(ModelLayout("synthetic", 1, (ATTENTION,)))
    assert not store.needs_snapshots and store.snapshot_bytes == 0
    publish(store, list(range(12)), snapshot_blocks=[])
    hit = lookup(store, list(range(12)) + [99])
    assert len(hit.blocks) == 3 and hit.snapshot_id is None
    keys, _ = store.read_pages(hit)[0]
    assert [int(keys[0, i * BLOCK_SIZE, 0]) for i in range(3)] == [0, 4, 8]
    store.release(hit)
    store.check_invariants()


def test_keys_and_values_of_different_shapes_are_paged_apart():
    """Latent attention (Kimi-Linear) caches a K/V latent and a rotary key of different widths."""
    latent = LayerSpec(0, kv=(TensorSpec((1, 6), torch.float32, CPU), TensorSpec((1, 2), torch.float32, CPU)), states=())
    store = PrefixStore(block_size=BLOCK_SIZE)
    store.bind(ModelLayout("synthetic", 1, (latent,)))
    assert store.page_bytes == (6 + 2) * BLOCK_SIZE * 4
    publish(store, list(range(8)), snapshot_blocks=[])
    hit = lookup(store, list(range(9)))
    keys, values = store.read_pages(hit)[0]
    assert keys.shape == (1, 2 * BLOCK_SIZE, 6) and values.shape == (1, 2 * BLOCK_SIZE, 2)
    assert bool((values[0, BLOCK_SIZE:] == 4).all())
    store.release(hit)


def test_cost_eviction_drops_a_shallow_snapshot_and_keeps_its_page():
    """A snapshot after 1 block saves a quarter of what one after 4 blocks saves, for the same bytes: it
    goes first, and its block stays as a page (the deeper snapshot still needs the whole chain)."""
    store = make_store(max_bytes=4 * PAGE_BYTES + 2 * SNAPSHOT_BYTES, eviction="cost")
    publish(store, [7] * 16, snapshot_blocks=[0, 3])
    assert store.stats()["snapshots"] == 2
    slot_id = store.reserve_snapshot()  # a request needs room for one more snapshot
    assert slot_id is not None
    stats = store.stats()
    assert (stats["blocks"], stats["snapshots"], stats["snapshot_evictions"], stats["evictions"]) == (4, 1, 1, 0)
    hit = lookup(store, [7] * 16 + [0])
    assert len(hit.blocks) == 4  # the deep snapshot survived
    store.release(hit)
    store.release_snapshots([slot_id])
    store.check_invariants()


def test_cost_eviction_drops_pages_past_the_last_snapshot_first():
    """A leaf page beyond every snapshot serves no hit: it goes before any snapshot."""
    store = make_store(max_bytes=3 * PAGE_BYTES + SNAPSHOT_BYTES, eviction="cost")
    publish(store, [8] * 12, snapshot_blocks=[0])
    assert publish(store, [9] * 4, snapshot_blocks=[]) == 1
    stats = store.stats()
    assert (stats["blocks"], stats["snapshots"], stats["evictions"]) == (3, 1, 1)
    assert len(lookup(store, [8] * 4 + [0]).blocks) == 1


def test_reserved_snapshots_count_in_the_budget_and_go_back():
    store = make_store(max_bytes=2 * (PAGE_BYTES + SNAPSHOT_BYTES))
    publish(store, [1] * 8)  # fills the budget
    hit = lookup(store, [1] * 8 + [0])  # pinned: nothing can be evicted
    assert store.reserve_snapshot() is None  # no room: the request saves nothing more
    store.release(hit)
    slot_ids = [store.reserve_snapshot(), store.reserve_snapshot()]
    assert None not in slot_ids and store.stats()["reserved_snapshots"] == 2
    assert store.bytes_used <= store.max_bytes
    store.check_invariants()
    store.release_snapshots(slot_ids)
    assert store.stats()["reserved_snapshots"] == 0
    store.check_invariants()


def test_publish_frees_the_snapshots_it_cannot_use():
    store = make_store()
    publish(store, [3] * 8)
    duplicate = store.reserve_snapshot()  # block 0 already has a snapshot
    beyond = store.reserve_snapshot()  # there is no block 5
    keys = block_keys(ROOT, torch.tensor([3] * 8), BLOCK_SIZE)
    assert store.publish(keys, lambda block_idx, views: None, {0: duplicate, 5: beyond}) == 0
    assert store.stats()["reserved_snapshots"] == 0 and store.stats()["snapshots"] == 2
    store.check_invariants()


def test_a_reservation_makes_room_for_the_pages_it_will_need():
    store = make_store(max_bytes=SNAPSHOT_BYTES + 2 * PAGE_BYTES)
    assert store.reserve_snapshot(num_new_pages=3) is None  # its pages could never be published
    slot_id = store.reserve_snapshot(num_new_pages=2)
    assert slot_id is not None
    keys = block_keys(ROOT, torch.tensor([4] * 8), BLOCK_SIZE)
    assert store.publish(keys, lambda block_idx, views: None, {1: slot_id}) == 2
    assert (store.stats()["blocks"], store.stats()["snapshots"]) == (2, 1)
    with pytest.raises(ValueError, match="num_new_pages must be >= 0"):
        store.reserve_snapshot(num_new_pages=-1)
