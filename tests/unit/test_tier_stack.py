"""TierStack alone on the synthetic layout: room made by the policy, demotion to the host tier, reserved
snapshot slots, and a failed page write that leaves nothing owned."""

import pytest
from test_prefix_store import BLOCK_SIZE, LAYOUT, PAGE_BYTES, SNAPSHOT_BYTES

from hf_hybrid_cache.layout import TensorSpec
from hf_hybrid_cache.store.block_index import BlockIndex
from hf_hybrid_cache.store.eviction import LruPolicy
from hf_hybrid_cache.store.tier_stack import TierStack

PAGE_SPECS = [
    TensorSpec((spec.shape[0], BLOCK_SIZE, *spec.shape[1:]), spec.dtype, spec.device)
    for layer in LAYOUT.attention for spec in layer.kv
]
SNAPSHOT_SPECS = [state.tensor for state in LAYOUT.state_specs]


def make_stack(device_pages, host_pages=0):
    index = BlockIndex()
    budgets = [("device", device_pages * PAGE_BYTES)] + ([("host", host_pages * PAGE_BYTES)] if host_pages else [])
    return index, TierStack(index, PAGE_SPECS, SNAPSHOT_SPECS, budgets, LruPolicy())


def add(index, stack, key, parent=None):
    page_id = stack.new_page(lambda views: [view.fill_(key[0]) for view in views])
    if page_id is None:
        return None
    block = index.add(key, parent, page_id)
    index.touch([block])
    return block


def test_sizes_come_from_the_specs():
    _, stack = make_stack(4)
    assert (stack.page_bytes, stack.snapshot_bytes) == (PAGE_BYTES, SNAPSHOT_BYTES)


def test_a_full_single_tier_drops_its_least_recent_leaf():
    index, stack = make_stack(2)
    add(index, stack, b"\x01")
    add(index, stack, b"\x02")
    add(index, stack, b"\x03")
    assert index.keys() == [b"\x02", b"\x03"] and stack.evictions == 1
    assert stack.problems() == []


def test_a_victim_moves_to_the_host_tier_with_its_content():
    index, stack = make_stack(1, host_pages=2)
    first = add(index, stack, b"\x07")
    add(index, stack, b"\x08")
    assert first.page_tier == 1 and stack.evictions == 0 and stack.device.demotions == 1
    assert all(view.eq(7).all() for view in stack.views("page", first.page_id, first.page_tier))
    assert stack.problems() == []


def test_pinned_blocks_are_never_victims():
    index, stack = make_stack(1)
    add(index, stack, b"\x01").num_pins = 1
    assert add(index, stack, b"\x02") is None
    assert stack.problems() == []


def test_reserved_snapshots_count_in_the_budget_until_released():
    index, stack = make_stack(2)
    slot_id = stack.reserve_snapshot(num_new_pages=0)
    assert slot_id is not None and stack.device.bytes_used == SNAPSHOT_BYTES and stack.problems() == []
    stack.release_snapshots([slot_id])
    assert stack.device.bytes_used == 0 and stack.problems() == []


def test_a_failed_page_write_frees_its_slot():
    _, stack = make_stack(2)

    def fail(views):
        raise RuntimeError("copy failed")

    with pytest.raises(RuntimeError):
        stack.new_page(fail)
    assert stack.device.pages.num_used == 0
