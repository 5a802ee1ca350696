"""The tier stack's seam for a remote tier (reads may fail), on the synthetic layout with an in-memory fake:
published blocks are written through, a store that lacks them locally reads the rest of the chain from it,
and a failed or malformed read is a miss."""

import torch
from test_prefix_store import BLOCK_SIZE, LAYOUT, lookup, publish

from hf_hybrid_cache.store import PrefixStore, RemoteBlock, RemoteTier


class FakeRemote(RemoteTier):
    """Blocks in a dict shared by the stores given it; `fail_reads` makes every read fail (a miss)."""

    def __init__(self):
        self.entries: dict[bytes, tuple[list[torch.Tensor], list[torch.Tensor] | None]] = {}
        self.fail_reads = False
        self.num_reads = 0

    def write(self, key, parent_key, page, snapshot):
        old_snapshot = self.entries.get(key, (None, None))[1]
        self.entries[key] = ([t.clone() for t in page], [t.clone() for t in snapshot] if snapshot else old_snapshot)

    def read_chain(self, keys, needs_snapshot):
        self.num_reads += 1
        if self.fail_reads:
            return []
        run = []
        for key in keys:
            if key not in self.entries:
                break
            run.append(key)
        if needs_snapshot:
            while run and self.entries[run[-1]][1] is None:
                run.pop()
        return [RemoteBlock(key, self.entries[key][0], self.entries[key][1] if key == run[-1] else None) for key in run]


def make_store(remote, **kwargs):
    store = PrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode="all", remote=remote, **kwargs)
    store.bind(LAYOUT)
    return store


def test_published_blocks_are_served_to_another_store_through_the_remote_tier():
    remote = FakeRemote()
    publish(make_store(remote), list(range(100, 112)))
    assert len(remote.entries) == 3

    other = make_store(remote)
    hit = lookup(other, list(range(100, 112)) + [0])
    assert len(hit.blocks) == 3 and remote.num_reads == 1
    keys, values = other.read_pages(hit)[0]
    assert keys[:, :BLOCK_SIZE].eq(100).all() and keys[:, -BLOCK_SIZE:].eq(108).all() and values.eq(keys).all()
    assert all(state.eq(-108).all() for state in other.read_snapshot(hit))
    other.release(hit)
    other.check_invariants()
    assert other.stats()["blocks"] == 3 and other.stats()["hit_tokens"] == 3 * BLOCK_SIZE


def test_the_remote_tier_continues_a_local_chain():
    remote = FakeRemote()
    publish(make_store(remote), list(range(100, 112)))
    other = make_store(remote)
    publish(other, list(range(100, 104)))  # the first block only, held locally
    hit = lookup(other, list(range(100, 112)) + [0])
    assert len(hit.blocks) == 3
    other.release(hit)
    other.check_invariants()


def test_a_failed_remote_read_is_a_miss():
    remote = FakeRemote()
    publish(make_store(remote), list(range(100, 112)))
    remote.fail_reads = True
    other = make_store(remote)
    assert lookup(other, list(range(100, 112)) + [0]).blocks == []
    other.check_invariants()


def test_a_value_of_another_shape_is_never_adopted():
    remote = FakeRemote()
    publish(make_store(remote), list(range(100, 112)))
    for key, (page, snapshot) in list(remote.entries.items()):
        remote.entries[key] = ([t[..., :1] for t in page], snapshot)  # truncated pages
    other = make_store(remote)
    assert lookup(other, list(range(100, 112)) + [0]).blocks == []
    assert other.stats()["blocks"] == 0


def test_a_remote_chain_too_long_for_the_local_budget_is_not_read_in():
    remote = FakeRemote()
    publish(make_store(remote), list(range(100, 132)))  # 8 blocks
    small = make_store(remote, max_bytes=3 * (64 + 40))  # room for 3 pages and snapshots
    assert lookup(small, list(range(100, 132)) + [0]).blocks == []
    assert small.stats()["blocks"] == 0
    small.check_invariants()
    hit = lookup(small, list(range(100, 108)) + [0])  # 2 blocks fit
    assert len(hit.blocks) == 2
    small.release(hit)
    small.check_invariants()
