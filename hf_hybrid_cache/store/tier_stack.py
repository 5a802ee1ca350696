"""The prefix store's memory: local tiers from the top (the layers' devices) down (host memory), the eviction
policy that picks each tier's victims, the moves between tiers, snapshot slots reserved by running requests,
and an optional remote tier below them all (`remote.py`) whose reads may fail.

It works on the block index's blocks and keeps the index in step when it drops one; the facade
(`prefix_store.py`) holds the lock around every call.
"""

import torch

from .block_index import Block, BlockIndex, Hit, pin, unpin
from .eviction import EvictionPolicy, Victim
from .remote import RemoteBlock, RemoteTier
from .tiers import DEVICE, StoreTier


class TierStack:
    """Local tiers (`budgets`: (name, max_bytes) from the top down) over one page layout and one snapshot layout.

    Args:
        page_specs: a K/V page's tensors (per attention layer, keys then values `[num_kv_heads, block_size,
            head_dim]`); snapshot_specs: a snapshot's tensors (`layout.state_specs` order).
        remote: a tier below the local ones, shared with other processes; None: none.
    """

    def __init__(self, index: BlockIndex, page_specs, snapshot_specs, budgets: list[tuple[str, int]],
                 policy: EvictionPolicy, remote: RemoteTier | None = None):
        self.index = index
        self.tiers = [StoreTier(name, page_specs, snapshot_specs, max_bytes) for name, max_bytes in budgets]
        self.policy = policy
        self.remote = remote
        self.reserved: set[int] = set()  # device snapshot slots requests are writing, not yet any block's
        self.evictions = 0  # blocks dropped
        self.snapshot_evictions = 0  # snapshots dropped, pages kept

    @property
    def device(self) -> StoreTier:
        return self.tiers[DEVICE]

    @property
    def page_bytes(self) -> int:
        return self.device.pages.slot_bytes

    @property
    def snapshot_bytes(self) -> int:
        return self.device.snapshots.slot_bytes

    def views(self, kind: str, slot_id: int, tier: int = DEVICE) -> list[torch.Tensor]:
        """A "page" or "snapshot" slot's tensors on the tier's memory; stable while the slot is owned."""
        return self.tiers[tier].pool(kind).views(slot_id)

    # -- slots written by requests -------------------------------------------------------------------------

    def reserve_snapshot(self, num_new_pages: int) -> int | None:
        """A device snapshot slot for a running request, with room made for `num_new_pages` pages too; None
        when nothing can be evicted to make room."""
        if not self.make_room(self.snapshot_bytes + num_new_pages * self.page_bytes):
            return None
        slot_id = self.device.snapshots.allocate()
        if slot_id is not None:
            self.reserved.add(slot_id)
        return slot_id

    def release_snapshots(self, slot_ids) -> None:
        for slot_id in slot_ids:
            self.reserved.remove(slot_id)
            self.device.snapshots.free(slot_id)

    def give_snapshot(self, block: Block, slot_id: int) -> None:
        """Make a reserved slot `block`'s snapshot (it has none)."""
        self.reserved.remove(slot_id)
        block.snapshot_id, block.snapshot_tier = slot_id, DEVICE

    def new_page(self, write) -> int | None:
        """A device page slot filled by `write(views)`, evicting to make room; None when nothing can go. A
        failed write frees the slot, so no half-written page is ever owned."""
        if not self.make_room(self.page_bytes):
            return None
        page_id = self.device.pages.allocate()
        if page_id is None:
            return None
        try:
            write(self.device.pages.views(page_id))
        except BaseException:
            self.device.pages.free(page_id)
            raise
        return page_id

    # -- eviction and moves --------------------------------------------------------------------------------

    def make_room(self, num_bytes: int, tier: int = DEVICE) -> bool:
        """Evict from `tier` until `num_bytes` more fit its budget; False when nothing more can go."""
        while self.tiers[tier].bytes_used + num_bytes > self.tiers[tier].max_bytes:
            if not self._evict_one(tier):
                return False
        return True

    def _evict_one(self, tier: int) -> bool:
        """Move the policy's victim one tier down, or drop it from the last tier (or when the tier below has
        no room); False when everything in `tier` is pinned or reserved."""
        if tier + 1 < len(self.tiers):
            victim = self._victim(tier, pages_may_go=self._no_child_in(tier))
            if victim is not None and self._demote(victim, tier):
                return True
        victim = self._victim(tier, pages_may_go=lambda block: block.num_children == 0)
        if victim is None:
            return False
        self.drop(victim)
        return True

    def _victim(self, tier: int, pages_may_go) -> Victim | None:
        def holds(block):
            return block.page_tier == tier, block.snapshot_id is not None and block.snapshot_tier == tier

        return self.policy.victim(self.index, holds, pages_may_go)

    def _no_child_in(self, tier: int):
        """Whether a block has no child whose page is in `tier` (a chain leaves a tier from its tail)."""
        parents = {block.parent.key for block in self.index if block.parent is not None and block.page_tier == tier}
        return lambda block: block.key not in parents

    def _demote(self, victim: Victim, tier: int) -> bool:
        """Move the victim's entries in `tier` to the tier below, evicting there to make room."""
        block = victim.block
        kinds = [kind for kind, here in zip(("page", "snapshot"), (
            not victim.snapshot_only and block.page_tier == tier,
            block.snapshot_id is not None and block.snapshot_tier == tier,
        )) if here]
        num_bytes = sum(self.tiers[tier].pool(kind).slot_bytes for kind in kinds)
        block.num_pins += 1  # the tier below must not evict the block being moved into it
        try:
            if not self.make_room(num_bytes, tier + 1):
                return False
            for kind in kinds:
                self._move(block, kind, tier + 1)
        finally:
            block.num_pins -= 1
        self.tiers[tier].demotions += len(kinds)
        return True

    def promote(self, hit: Hit) -> None:
        """Bring the pages and final snapshot of a hit back to the device tier when they are elsewhere and
        room can be made; what stays below is read from there. Only blocks no other request holds move:
        another holder may be reading the slot (reads run without the lock)."""
        entries = [(block, "page") for block in hit.blocks if block.page_tier != DEVICE]
        if hit.blocks and hit.blocks[-1].snapshot_id is not None and hit.blocks[-1].snapshot_tier != DEVICE:
            entries.append((hit.blocks[-1], "snapshot"))
        for block, kind in entries:
            if block.num_pins == 1 and self.make_room(self.device.pool(kind).slot_bytes, DEVICE):
                self._move(block, kind, DEVICE)
                self.device.promotions += 1

    def _move(self, block: Block, kind: str, tier: int) -> None:
        """Copy `block`'s page or snapshot into a slot of `tier` (room already made) and free the old slot."""
        source_pool, target_pool = self.tiers[getattr(block, f"{kind}_tier")].pool(kind), self.tiers[tier].pool(kind)
        source_id = getattr(block, f"{kind}_id")
        target_id = target_pool.allocate()
        for target, source in zip(target_pool.views(target_id), source_pool.views(source_id)):
            target.copy_(source)
        source_pool.free(source_id)
        setattr(block, f"{kind}_id", target_id)
        setattr(block, f"{kind}_tier", tier)

    def drop(self, victim: Victim) -> None:
        """Drop the victim's snapshot, and unless `snapshot_only` the whole (leaf) block, wherever they live."""
        block = victim.block
        if block.snapshot_id is not None:
            self.tiers[block.snapshot_tier].snapshots.free(block.snapshot_id)
            block.snapshot_id = None
        if victim.snapshot_only:
            self.snapshot_evictions += 1
            return
        self.index.remove(block)
        self.tiers[block.page_tier].pages.free(block.page_id)
        self.evictions += 1

    # -- the remote tier -----------------------------------------------------------------------------------

    def write_remote(self, block: Block) -> None:
        """Queue `block`'s page and snapshot (if any) for the remote tier; the remote copies them before it
        returns."""
        if self.remote is None:
            return
        snapshot = self.views("snapshot", block.snapshot_id, block.snapshot_tier) if block.snapshot_id is not None else None
        parent_key = block.parent.key if block.parent is not None else None
        self.remote.write(block.key, parent_key, self.views("page", block.page_id, block.page_tier), snapshot)

    def adopt_remote(self, parent: Block | None, fetched: list[RemoteBlock]) -> None:
        """Insert blocks the remote tier returned (a chain continuing `parent`) into the device tier, as far
        as room can be made and their tensors fit the layout (nothing when the whole chain could never fit);
        blocks another thread inserted meanwhile stay as they are."""
        new_entries = [entry for entry in fetched if self.index.get(entry.key) is None]
        needed = len(new_entries) * self.page_bytes + sum(entry.snapshot is not None for entry in fetched) * self.snapshot_bytes
        if needed > self.device.max_bytes:
            return  # a chain that cannot end on its snapshot here serves no hit
        held = [parent] if parent is not None else []
        pin(held)  # making room for a block must not evict the chain it continues
        try:
            for entry in fetched:
                if not _fits(self.device.pages.specs, entry.page) or (
                    entry.snapshot is not None and not _fits(self.device.snapshots.specs, entry.snapshot)
                ):
                    return
                block = self.index.get(entry.key)
                if block is None:
                    page_id = self.new_page(lambda views: _copy_all(views, entry.page))
                    if page_id is None:
                        return
                    block = self.index.add(entry.key, parent, page_id)
                pin([block])
                held.append(block)
                if entry.snapshot is not None and block.snapshot_id is None and self.make_room(self.snapshot_bytes):
                    slot_id = self.device.snapshots.allocate()
                    _copy_all(self.views("snapshot", slot_id), entry.snapshot)
                    block.snapshot_id, block.snapshot_tier = slot_id, DEVICE
                parent = block
        finally:
            unpin(held)
            self.index.touch(held)  # children stay less recent than their parents

    # -- inspection ----------------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Broken memory invariants: budgets, every used slot owned by exactly one block (or, for device
        snapshots, reserved by a request), blocks only in existing tiers. O(blocks)."""
        problems = []
        for tier in self.tiers:
            if tier.bytes_used > tier.max_bytes:
                problems.append(f"{tier.name} tier holds {tier.bytes_used} bytes > its budget {tier.max_bytes}")
        blocks = list(self.index)
        for tier_idx, tier in enumerate(self.tiers):
            page_ids = [block.page_id for block in blocks if block.page_tier == tier_idx]
            snapshot_ids = [
                block.snapshot_id for block in blocks if block.snapshot_id is not None and block.snapshot_tier == tier_idx
            ]
            if tier_idx == DEVICE:  # requests reserve snapshot slots on the device only
                if set(snapshot_ids) & self.reserved:
                    problems.append(f"snapshot slots both owned and reserved: {sorted(set(snapshot_ids) & self.reserved)}")
                snapshot_ids += list(self.reserved)
            for name, ids in (("page", page_ids), ("snapshot", snapshot_ids)):
                pool = tier.pool(name)
                if len(set(ids)) != len(ids) or pool.num_used != len(ids):
                    problems.append(
                        f"{tier.name} tier: {pool.num_used} {name} slots in use, {len(set(ids))} distinct held by {len(ids)} owners"
                    )
                if any(pool.is_free(slot_id) for slot_id in ids):
                    problems.append(f"{tier.name} tier: {name} slots both held and free")
        tiers = {block.page_tier for block in blocks} | {block.snapshot_tier for block in blocks}
        if not tiers <= set(range(len(self.tiers))):
            problems.append(f"blocks in tiers {sorted(tiers)}, the store has {len(self.tiers)}")
        return problems


def _fits(specs, tensors: list[torch.Tensor]) -> bool:
    return len(specs) == len(tensors) and all(
        tuple(t.shape) == spec.shape and t.dtype == spec.dtype for spec, t in zip(specs, tensors)
    )


def _copy_all(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    for target, source in zip(targets, sources):
        target.copy_(source)
