"""The "cost" policy's choice among snapshots, on hand-made trees (`eviction.cost_victim` is a pure function
of the blocks it is shown; pages stay out of these cases: no page is in the tier)."""

from types import SimpleNamespace

from hf_hybrid_cache.store.eviction import cost_victim


def block(depth, parent, used):
    """A leaf block with a snapshot, as `prefix_store.Block` describes it."""
    return SimpleNamespace(depth=depth, parent=parent, snapshot_id=depth, num_children=0, branched=False,
                           num_pins=0, snapshot_used=used, page_used=used)


def chain(depth, used):
    """Blocks 1..depth of one path, none with a snapshot but the last one (returned)."""
    parent = None
    for d in range(1, depth):
        parent = SimpleNamespace(depth=d, parent=parent, snapshot_id=None, num_children=1, num_pins=0)
    return block(depth, parent, used)


def victim(*blocks):
    found = cost_victim(blocks, holds=lambda b: (False, b.snapshot_id is not None), may_go=lambda b: False,
                        block_size=16, page_bytes=64, snapshot_bytes=1024, needs_snapshots=True)
    return found.block


def test_a_snapshot_saves_only_the_blocks_past_the_snapshot_above_it():
    """A chat's latest state 1 block below a cached shared prompt saves 1 block: it goes before a more
    recent 4-block state that is alone on its path, though it is the deepest of all."""
    shared = chain(10, used=6)
    shared.num_children, shared.branched = 2, True
    latest_turn = block(11, shared, used=4)
    alone = chain(4, used=5)
    assert victim(shared, latest_turn, alone) is latest_turn
    # Without the shared prompt's state, the latest turn saves all 11 blocks and the 4-block state goes.
    shared.snapshot_id = None
    assert victim(latest_turn, alone) is alone


def test_a_former_branch_point_is_not_superseded():
    """A snapshot with one child on a path that never branched (an earlier turn of a chat) goes before any
    other; a branch point that lost one of its two children to eviction still serves every request sharing
    its prefix, and is ranked by utility like the rest."""
    earlier_turn = chain(3, used=5)
    earlier_turn.num_children = 1
    shared = chain(3, used=1)
    shared.num_children, shared.branched = 1, True
    assert victim(shared, earlier_turn) is earlier_turn
    shared.branched = False  # the same tree had it never branched: both superseded, the older goes
    assert victim(shared, earlier_turn) is shared
