"""The prefix store: K/V pages and recurrent-state snapshots of complete blocks, shared by every cache.

Blocks form a tree through their chained keys (see `hashing.py`); a block holds one K/V page for all
attention layers and, optionally, one snapshot of all recurrent layers (the state after its last token).
Live caches pin the blocks they were served from; a request writes the snapshots it takes straight into
slots it reserved (counted in the budget), handed to the blocks when it publishes. Eviction follows the
store's policy (`eviction.py`). Everything here runs under one lock; tensors are copied in and out by the
cache (see `cache.py`) through slot views that stay valid while their slot is owned.
"""

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Container
from dataclasses import dataclass, field

import torch

from .display import html_table, store_rows
from .eviction import EVICTION_POLICIES, Victim, cost_victim, lru_victim
from .layout import ModelLayout, TensorSpec
from .modes import MAMBA_CACHE_MODES
from .tiers import DEVICE, StoreTier

DEFAULT_BLOCK_SIZE = 64
DEFAULT_MAX_BYTES = 1 << 30
# Chosen with benchmarks/trace.py: branch with cost-aware eviction serves the most tokens at every budget.
DEFAULT_EVICTION = "cost"


@dataclass(eq=False)
class Block:
    """One complete block of a cached prefix: its K/V page, maybe the state snapshot after its last token."""

    key: bytes
    parent: "Block | None"
    page_id: int
    depth: int  # blocks from the root, this one included
    snapshot_id: int | None = None
    # Which tier (`tiers.py`) holds the page / the snapshot.
    page_tier: int = DEVICE
    snapshot_tier: int = DEVICE
    num_children: int = 0
    branched: bool = False  # has had two children or more: a prefix requests share, whatever was evicted since
    # Live caches (and a publish in progress) holding this block; a pinned block is never evicted.
    num_pins: int = 0
    # The store's clock when the page / the snapshot last served a request (eviction's recency).
    page_used: int = 0
    snapshot_used: int = 0


@dataclass(frozen=True)
class HeldBlock:
    """What `PrefixStore.hold_all` reports of a pinned block (its slots stay valid while pinned)."""

    key: bytes
    parent_key: bytes | None
    page_id: int
    page_tier: int
    snapshot_id: int | None
    snapshot_tier: int
    page_used: int
    snapshot_used: int
    branched: bool


@dataclass
class Hit:
    """The blocks a request is served from: `blocks[i]` covers tokens `[i * block_size, (i+1) * block_size)`,
    and the last one carries the snapshot (when the model has recurrent layers). Pinned until
    `PrefixStore.release`. `num_matched`: how many leading blocks of the query the store holds at all,
    with or without snapshot (where the prompt leaves the longest cached path)."""

    blocks: list[Block] = field(default_factory=list)
    num_matched: int = 0

    @property
    def page_ids(self) -> list[int]:
        return [block.page_id for block in self.blocks]

    @property
    def snapshot_id(self) -> int | None:
        return self.blocks[-1].snapshot_id if self.blocks else None


class PrefixStore:
    """K/V pages and recurrent-state snapshots keyed by chained block digests, bounded by `max_bytes`,
    thread-safe.

    Args:
        block_size: tokens per block: the K/V page size and the interval between state snapshots.
            Any value >= 1 is exact; larger blocks cost fewer snapshots and give coarser hits.
        mamba_cache_mode: where recurrent (GDN, Mamba, conv) states are saved (`modes.py`). "none": never
            (a hybrid model gets no hits); "align": at the last block boundary before the final prompt
            token, and at each boundary reached while generating; "branch": as align, plus where the prompt
            leaves the longest cached path, and only the last boundary reached while generating; "all":
            at every boundary. A model without recurrent layers needs no snapshots: every complete block
            is a hit point.
        max_bytes: bound on pages and snapshots together, those requests are writing included.
        eviction: "cost" (snapshots and pages evicted separately, by recency and compute saved per byte)
            or "lru" (least recently used leaf block, page and snapshot together).
        host_bytes: budget of a host-memory tier (0: none). Entries evicted from the device tier move there
            (pinned memory under a CUDA model) instead of being dropped, and move back when a request hits
            them; the host tier evicts by the same policy and drops what it evicts.

    The first cache bound to a store fixes its model layout (shapes, dtype, devices); a model with
    another layout needs its own store. Entries of different models or namespaces never hit each other.
    """

    def __init__(
        self,
        block_size: int = DEFAULT_BLOCK_SIZE,
        mamba_cache_mode: str = "branch",
        max_bytes: int = DEFAULT_MAX_BYTES,
        eviction: str = DEFAULT_EVICTION,
        host_bytes: int = 0,
    ):
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be an int >= 1 (for example 64 or 560), got {block_size!r}")
        if mamba_cache_mode not in MAMBA_CACHE_MODES:
            raise ValueError(f"mamba_cache_mode must be one of {MAMBA_CACHE_MODES}, got {mamba_cache_mode!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive int (for example 256 << 20), got {max_bytes!r}")
        if eviction not in EVICTION_POLICIES:
            raise ValueError(f"eviction must be one of {EVICTION_POLICIES}, got {eviction!r}")
        if isinstance(host_bytes, bool) or not isinstance(host_bytes, int) or host_bytes < 0:
            raise ValueError(f"host_bytes must be an int >= 0 (0: no host tier; for example 4 << 30), got {host_bytes!r}")
        self.block_size = block_size
        self.mamba_cache_mode = mamba_cache_mode
        self.max_bytes = max_bytes
        self.eviction = eviction
        self.layout: ModelLayout | None = None
        self.model_fingerprints: set[str] = set()  # hex fingerprints of the models bound so far (saved in files)
        self._lock = threading.RLock()
        self.host_bytes = host_bytes
        self._tiers: list[StoreTier] = []  # device, then host if host_bytes; made by `bind`
        # Least recently used first; a chain is touched deepest first (see `_touch`).
        self._blocks: OrderedDict[bytes, Block] = OrderedDict()
        self._reserved: set[int] = set()  # snapshot slots requests are writing, not yet any block's
        self._clock = 0
        self._counters = dict(queries=0, query_tokens=0, hit_tokens=0, evictions=0, snapshot_evictions=0)

    def __repr__(self) -> str:
        stats = self.stats()
        return (
            f"PrefixStore(block_size={self.block_size}, mamba_cache_mode={self.mamba_cache_mode!r}, "
            f"eviction={self.eviction!r}, blocks={stats['blocks']}, snapshots={stats['snapshots']}, "
            f"bytes_used={stats['bytes_used']:,}/{self.max_bytes:,}, hit_rate={stats['hit_rate']:.2f})"
        )

    def _repr_html_(self) -> str:
        return html_table("PrefixStore", store_rows(self.stats()))

    # -- binding -------------------------------------------------------------------------------------

    def bind(self, layout: ModelLayout, model_fingerprint: bytes | None = None) -> None:
        """Fix the store's layout on first use; refuse a model whose cache has another layout."""
        with self._lock:
            if model_fingerprint is not None and self.layout in (None, layout):
                self.model_fingerprints.add(model_fingerprint.hex())
            if self.layout is None:
                # Per attention layer, its keys then its values: `[num_kv_heads, block_size, head_dim]` each.
                page_specs = [
                    TensorSpec((spec.shape[0], self.block_size, *spec.shape[1:]), spec.dtype, spec.device)
                    for layer in layout.attention
                    for spec in layer.kv
                ]
                snapshot_specs = [state.tensor for state in layout.state_specs]
                page_bytes = sum(spec.num_bytes for spec in page_specs)
                snapshot_bytes = sum(spec.num_bytes for spec in snapshot_specs)
                needed = page_bytes + snapshot_bytes
                if self.max_bytes < needed:
                    raise ValueError(
                        f"max_bytes={self.max_bytes:,} cannot hold one block of this model: one K/V page takes "
                        f"{page_bytes:,} bytes and one state snapshot {snapshot_bytes:,} bytes at "
                        f"block_size={self.block_size}. Use max_bytes >= {needed:,} (many times that to be useful)."
                    )
                self._tiers = [StoreTier("device", page_specs, snapshot_specs, self.max_bytes)]
                if self.host_bytes:
                    self._tiers.append(StoreTier("host", page_specs, snapshot_specs, self.host_bytes))
                self.layout = layout
            elif layout != self.layout:
                raise ValueError(
                    f"This PrefixStore holds blocks for {self.layout.describe()}, but the model is "
                    f"{layout.describe()}. Give each model (or dtype/device placement) its own store: "
                    "HybridPrefixCache(model, store=PrefixStore(...))."
                )

    @property
    def needs_snapshots(self) -> bool:
        """Whether a hit must end on a block with a state snapshot (the model has recurrent layers)."""
        return bool(self.layout is not None and self.layout.state_specs)

    @property
    def page_specs(self) -> list[TensorSpec]:
        """A K/V page's tensors: per attention layer, keys then values `[num_kv_heads, block_size, head_dim]`."""
        return self._device.pages.specs if self._tiers else []

    @property
    def snapshot_specs(self) -> list[TensorSpec]:
        """A snapshot's tensors, in `layout.state_specs` order."""
        return self._device.snapshots.specs if self._tiers else []

    @property
    def page_bytes(self) -> int:
        return self._device.pages.slot_bytes if self._tiers else 0

    @property
    def snapshot_bytes(self) -> int:
        return self._device.snapshots.slot_bytes if self._tiers else 0

    @property
    def bytes_used(self) -> int:
        """Bytes held in the device tier (within `max_bytes`); see `stats()["tiers"]` for each tier."""
        return self._device.bytes_used if self._tiers else 0

    @property
    def _device(self) -> StoreTier:
        return self._tiers[DEVICE]

    # -- lookup ----------------------------------------------------------------------------------------

    def lookup(self, keys: list[bytes], num_query_tokens: int, may_end_after: Container[int] | None = None) -> Hit:
        """Pin and return the longest chain of `keys` that ends on a block with a snapshot (any block, for a
        model without recurrent layers).

        `keys` are the block keys of the usable prefix (the caller leaves at least one token to compute);
        `may_end_after`, if given, the numbers of blocks a hit may span (not one that cuts an image).
        """
        with self._lock:
            self._counters["queries"] += 1
            self._counters["query_tokens"] += num_query_tokens
            chain, best = [], 0
            for key in keys:
                block = self._blocks.get(key)
                if block is None:
                    break
                chain.append(block)
                if (block.snapshot_id is not None or not self.needs_snapshots) and (
                    may_end_after is None or len(chain) in may_end_after
                ):
                    best = len(chain)
            hit = Hit(chain[:best], num_matched=len(chain))
            for block in hit.blocks:
                block.num_pins += 1
            self._promote(hit)
            self._touch(hit.blocks)
            if hit.blocks:
                hit.blocks[-1].snapshot_used = self._clock
            self._counters["hit_tokens"] += best * self.block_size
            return hit

    def release(self, hit: Hit) -> None:
        """Unpin the blocks of `hit`; call once per `lookup`."""
        with self._lock:
            for block in hit.blocks:
                block.num_pins -= 1
            hit.blocks = []

    def read_pages(self, hit: Hit) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The K/V of `hit`'s blocks per attention layer: keys, values `[num_kv_heads, num_tokens, head_dim]`.

        Safe without the lock: pinned pages are never freed nor rewritten, and slot views never move.
        """
        per_block = [self._tiers[block.page_tier].pages.views(block.page_id) for block in hit.blocks]
        # Per cache tensor, the blocks' `[H, block_size, D]` pages side by side along the sequence (a page
        # the host tier could not give back to the device is copied over here).
        gathered = [
            torch.cat([page.to(spec.device) for page in pages], dim=1) for spec, pages in zip(self.page_specs, zip(*per_block))
        ]
        return list(zip(gathered[0::2], gathered[1::2]))

    def read_snapshot(self, hit: Hit) -> list[torch.Tensor]:
        """The snapshot of `hit`'s last block: every recurrent state in `layout.state_specs` order.

        Views into the pool, valid while `hit` is pinned (pinned slots are never freed nor rewritten);
        the caller copies them into its live state.
        """
        last = hit.blocks[-1]
        return self._tiers[last.snapshot_tier].snapshots.views(last.snapshot_id)

    def page_views(self, page_id: int, tier: int = DEVICE) -> list[torch.Tensor]:
        """A page slot's tensors (`page_specs`, on the tier's memory); stable while the slot is owned."""
        return self._tiers[tier].pages.views(page_id)

    # -- snapshots being written -------------------------------------------------------------------------

    def reserve_snapshot(self, num_new_pages: int = 0) -> int | None:
        """A snapshot slot for a running request to write into (`snapshot_views`), counted in the budget and
        never evicted; None when nothing can be evicted to make room. Hand it to `publish` or give it back
        with `release_snapshots`.

        `num_new_pages`: pages the request will publish up to this snapshot's block. Room is made for them
        too (not reserved), so that a request's own snapshots do not leave its pages without a place.
        """
        if num_new_pages < 0:
            raise ValueError(f"num_new_pages must be >= 0, got {num_new_pages}")
        with self._lock:
            if not self._make_room(self.snapshot_bytes + num_new_pages * self.page_bytes):
                return None
            slot_id = self._device.snapshots.allocate()
            if slot_id is not None:
                self._reserved.add(slot_id)
            return slot_id

    def has_room(self, num_snapshots: int, num_pages: int) -> bool:
        """Whether that many more snapshots and pages fit in the budget without evicting anything."""
        with self._lock:
            return self.bytes_used + num_snapshots * self.snapshot_bytes + num_pages * self.page_bytes <= self.max_bytes

    def snapshot_views(self, slot_id: int, tier: int = DEVICE) -> list[torch.Tensor]:
        """The slot's tensors in `layout.state_specs` order; stable while the slot is reserved or owned."""
        return self._tiers[tier].snapshots.views(slot_id)

    def release_snapshots(self, slot_ids) -> None:
        """Give back reserved snapshot slots that will not be published (a failed or partial request)."""
        with self._lock:
            for slot_id in slot_ids:
                self._reserved.remove(slot_id)
                self._device.snapshots.free(slot_id)

    # -- publish ---------------------------------------------------------------------------------------

    def publish(
        self,
        keys: list[bytes],
        write_page: Callable[[int, list[torch.Tensor]], None],
        snapshots: dict[int, int],
    ) -> int:
        """Insert the blocks of one request, reusing those already present.

        Args:
            keys: block keys of the request's complete blocks, in order.
            write_page: `write_page(block_idx, page_tensors)` copies block `block_idx`'s K/V into the given
                slot views (per attention layer, keys then values, each `[num_kv_heads, block_size, head_dim]`).
            snapshots: block index -> a reserved slot holding the state after that block. Each becomes the
                block's snapshot, or is freed (the block has one, or could not be inserted).

        Returns:
            the number of blocks newly inserted. A block becomes visible only once fully written; when
            the budget is exhausted (all else pinned) publishing stops at that block.
        """
        with self._lock:
            chain: list[Block] = []
            given: list[Block] = []  # blocks that took one of the request's snapshots
            inserted = 0
            pending = dict(snapshots)
            try:
                for block_idx, key in enumerate(keys):
                    block = self._blocks.get(key)
                    if block is None:
                        block = self._insert_block(key, chain[-1] if chain else None, block_idx, write_page)
                        if block is None:
                            break
                        inserted += 1
                    # Pinned while this publish runs, so making room for the next block never evicts it.
                    block.num_pins += 1
                    chain.append(block)
                    slot_id = pending.pop(block_idx, None)
                    if slot_id is not None and block.snapshot_id is None:
                        self._reserved.remove(slot_id)
                        block.snapshot_id, block.snapshot_tier = slot_id, DEVICE
                        given.append(block)
                    elif slot_id is not None:
                        pending[block_idx] = slot_id  # freed below: the block already has a snapshot
            finally:
                for block in chain:
                    block.num_pins -= 1
                self._touch(chain)
                for block in given:
                    block.snapshot_used = self._clock
                self.release_snapshots(pending.values())
            return inserted

    def _insert_block(self, key, parent, block_idx, write_page) -> Block | None:
        """Allocate a page (evicting if needed), fill it, and add the block; None when nothing can be
        evicted. A failed write frees the page, so no half-written block ever exists."""
        if not self._make_room(self.page_bytes):
            return None
        page_id = self._device.pages.allocate()
        if page_id is None:
            return None
        try:
            write_page(block_idx, self._device.pages.views(page_id))
        except BaseException:
            self._device.pages.free(page_id)
            raise
        block = Block(key=key, parent=parent, page_id=page_id, depth=parent.depth + 1 if parent else 1)
        if parent is not None:
            parent.num_children += 1
            parent.branched |= parent.num_children > 1
        self._blocks[key] = block
        return block

    # -- eviction --------------------------------------------------------------------------------------

    def _make_room(self, num_bytes: int, tier: int = DEVICE) -> bool:
        """Evict from `tier` until `num_bytes` more fit its budget; False when nothing more can go."""
        while self._tiers[tier].bytes_used + num_bytes > self._tiers[tier].max_bytes:
            if not self._evict_one(tier):
                return False
        return True

    def _evict_one(self, tier: int) -> bool:
        """Move the policy's victim one tier down, or drop it from the last tier (or when the tier below has
        no room); False when everything in `tier` is pinned or reserved."""
        if tier + 1 < len(self._tiers):
            victim = self._victim(tier, pages_may_go=self._no_child_in(tier))
            if victim is not None and self._demote(victim, tier):
                return True
        victim = self._victim(tier, pages_may_go=lambda block: block.num_children == 0)
        if victim is None:
            return False
        self._evict(victim)
        return True

    def _victim(self, tier: int, pages_may_go) -> Victim | None:
        def holds(block):
            return block.page_tier == tier, block.snapshot_id is not None and block.snapshot_tier == tier

        if self.eviction == "lru":
            return lru_victim(self._blocks.values(), holds, pages_may_go)
        return cost_victim(
            self._blocks.values(), holds, pages_may_go, self.block_size, self.page_bytes, self.snapshot_bytes,
            self.needs_snapshots,
        )

    def _no_child_in(self, tier: int):
        """Whether a block has no child whose page is in `tier` (a chain leaves a tier from its tail)."""
        parents = {block.parent.key for block in self._blocks.values() if block.parent is not None and block.page_tier == tier}
        return lambda block: block.key not in parents

    def _demote(self, victim: Victim, tier: int) -> bool:
        """Move the victim's entries in `tier` to the tier below, evicting there to make room."""
        block = victim.block
        kinds = [kind for kind, here in zip(("page", "snapshot"), (
            not victim.snapshot_only and block.page_tier == tier,
            block.snapshot_id is not None and block.snapshot_tier == tier,
        )) if here]
        num_bytes = sum(self._tiers[tier].pool(kind).slot_bytes for kind in kinds)
        block.num_pins += 1  # the tier below must not evict the block being moved into it
        try:
            if not self._make_room(num_bytes, tier + 1):
                return False
            for kind in kinds:
                self._move(block, kind, tier + 1)
        finally:
            block.num_pins -= 1
        self._tiers[tier].demotions += len(kinds)
        return True

    def _promote(self, hit: Hit) -> None:
        """Bring the pages and final snapshot of a hit back to the device tier when they are elsewhere and
        room can be made; what stays below is read from there (`read_pages`). Only blocks no other request
        holds move: another holder may be reading the slot (reads run without the lock)."""
        entries = [(block, "page") for block in hit.blocks if block.page_tier != DEVICE]
        if hit.blocks and hit.blocks[-1].snapshot_id is not None and hit.blocks[-1].snapshot_tier != DEVICE:
            entries.append((hit.blocks[-1], "snapshot"))
        for block, kind in entries:
            if block.num_pins == 1 and self._make_room(self._device.pool(kind).slot_bytes, DEVICE):
                self._move(block, kind, DEVICE)
                self._device.promotions += 1

    def _move(self, block: Block, kind: str, tier: int) -> None:
        """Copy `block`'s page or snapshot into a slot of `tier` (room already made) and free the old slot."""
        source_tier = getattr(block, f"{kind}_tier")
        source_pool, target_pool = self._tiers[source_tier].pool(kind), self._tiers[tier].pool(kind)
        source_id = getattr(block, f"{kind}_id")
        target_id = target_pool.allocate()
        for target, source in zip(target_pool.views(target_id), source_pool.views(source_id)):
            target.copy_(source)
        source_pool.free(source_id)
        setattr(block, f"{kind}_id", target_id)
        setattr(block, f"{kind}_tier", tier)

    def _evict(self, victim: Victim) -> None:
        """Drop the victim's snapshot, and unless `snapshot_only` the whole (leaf) block, wherever they live."""
        block = victim.block
        if block.snapshot_id is not None:
            self._tiers[block.snapshot_tier].snapshots.free(block.snapshot_id)
            block.snapshot_id = None
        if victim.snapshot_only:
            self._counters["snapshot_evictions"] += 1
            return
        del self._blocks[block.key]
        self._tiers[block.page_tier].pages.free(block.page_id)
        if block.parent is not None:
            block.parent.num_children -= 1
        self._counters["evictions"] += 1

    def _touch(self, chain: list[Block]) -> None:
        # Deepest first, so that an ancestor always ranks as more recent than its descendants and
        # eviction peels a chain from its tail.
        self._clock += 1
        for block in reversed(chain):
            block.page_used = self._clock
            self._blocks.move_to_end(block.key)

    # -- persistence (the file format lives in `persistence.py`) --------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write every block (K/V pages, snapshots, keys, recency) to one safetensors file at `path`.

        Atomic: the file is written beside `path` and renamed over it, so a crash leaves the previous file
        or none. Other threads may keep serving meanwhile; requests in flight are not saved.
        """
        from .persistence import save_store

        save_store(self, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        max_bytes: int | None = None,
        host_bytes: int | None = None,
        device: str | torch.device | None = None,
    ) -> "PrefixStore":
        """A store with the blocks `save` wrote to `path`: the most recently used ones that fit, in the device
        tier within `max_bytes` and then in the host tier within `host_bytes` (None: the saved budgets).
        `device`: where every tensor goes instead of where it was saved (for example "cpu" for a file saved on
        a GPU).

        Raises FileNotFoundError, or ValueError naming the file when it is truncated, not a prefix store or
        inconsistent with its own index. Entries whose checksum fails are dropped with a warning and never
        served. A model other than the saved one gets no hits (block keys digest the model), or the layout
        error of `bind` when its cache has another shape.
        """
        from .persistence import load_store

        return load_store(cls, path, max_bytes=max_bytes, host_bytes=host_bytes, device=device)

    def hold_all(self) -> tuple[Hit, list["HeldBlock"]]:
        """Pin every block (release the returned `Hit` when done) and describe them least recently used first."""
        with self._lock:
            hit = Hit(list(self._blocks.values()))
            for block in hit.blocks:
                block.num_pins += 1
            entries = [
                HeldBlock(block.key, block.parent.key if block.parent else None, block.page_id, block.page_tier,
                          block.snapshot_id, block.snapshot_tier, block.page_used, block.snapshot_used, block.branched)
                for block in hit.blocks
            ]
            return hit, entries

    def adopt_blocks(self, entries: list[tuple]) -> dict[bytes, tuple[list[torch.Tensor], list[torch.Tensor] | None]]:
        """Add blocks read from a file to an empty bound store, without evicting: `entries` are (key,
        parent_key, page_tier, snapshot_tier (None: no snapshot), page_used, snapshot_used, branched), least
        recently used first, parents present among them, their slots within each tier's budget. Returns per
        key the page and snapshot slot views to fill."""
        with self._lock:
            if self._blocks or self._reserved:
                raise ValueError("adopt_blocks fills an empty store")
            views, adopted = {}, []
            for key, parent_key, page_tier, snapshot_tier, page_used, snapshot_used, branched in reversed(entries):
                parent = self._blocks[parent_key] if parent_key is not None else None
                block = Block(key=key, parent=parent, page_id=self._tiers[page_tier].pages.allocate(),
                              page_tier=page_tier, depth=parent.depth + 1 if parent else 1, page_used=page_used,
                              snapshot_used=snapshot_used, branched=branched)
                if snapshot_tier is not None:
                    block.snapshot_id = self._tiers[snapshot_tier].snapshots.allocate()
                    block.snapshot_tier = snapshot_tier
                if parent is not None:
                    parent.num_children += 1
                self._blocks[key] = block
                adopted.append(block)
                snapshot = self.snapshot_views(block.snapshot_id, snapshot_tier) if snapshot_tier is not None else None
                views[key] = (self.page_views(block.page_id, page_tier), snapshot)
            self._blocks = OrderedDict((block.key, block) for block in reversed(adopted))
            self._clock = max((max(block.page_used, block.snapshot_used) for block in adopted), default=0)
            return views

    def drop_damaged(self, page_keys: set[bytes], snapshot_keys: set[bytes]) -> int:
        """Drop the blocks of `page_keys` with every block below them, and the snapshots of `snapshot_keys`
        (their pages stay). Returns the number of blocks dropped."""
        with self._lock:
            dropped = set()
            for block in reversed(self._blocks.values()):  # most recent first: parents before their children
                if block.key in page_keys or (block.parent is not None and block.parent.key in dropped):
                    dropped.add(block.key)
            for key in snapshot_keys - dropped:
                self._evict(Victim(self._blocks[key], snapshot_only=True))
            for block in list(self._blocks.values()):  # least recent first: children before their parents
                if block.key in dropped:
                    self._evict(Victim(block))
            return len(dropped)

    # -- inspection ------------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Counters and sizes: queries, query_tokens, hit_tokens, hit_rate, blocks, snapshots,
        reserved_snapshots, pinned_blocks, bytes_used, max_bytes, page_bytes, snapshot_bytes, evictions
        (blocks dropped), snapshot_evictions (snapshots dropped, pages kept), block_size, mode, eviction,
        and `tiers`: per tier ("device", "host" when `host_bytes`), its bytes_used, max_bytes, blocks (pages
        held there), snapshots, promotions (entries moved in on a hit) and demotions (entries moved down)."""
        with self._lock:
            query_tokens = self._counters["query_tokens"]
            return dict(
                **self._counters,
                hit_rate=self._counters["hit_tokens"] / query_tokens if query_tokens else 0.0,
                blocks=len(self._blocks),
                snapshots=sum(1 for block in self._blocks.values() if block.snapshot_id is not None),
                reserved_snapshots=len(self._reserved),
                pinned_blocks=sum(1 for block in self._blocks.values() if block.num_pins),
                bytes_used=self.bytes_used,
                max_bytes=self.max_bytes,
                page_bytes=self.page_bytes,
                snapshot_bytes=self.snapshot_bytes,
                block_size=self.block_size,
                mamba_cache_mode=self.mamba_cache_mode,
                eviction=self.eviction,
                tiers={tier.name: self._tier_stats(tier_idx, tier) for tier_idx, tier in enumerate(self._tiers)},
            )

    def _tier_stats(self, tier_idx: int, tier: StoreTier) -> dict:
        blocks = self._blocks.values()
        return dict(
            bytes_used=tier.bytes_used,
            max_bytes=tier.max_bytes,
            blocks=sum(1 for block in blocks if block.page_tier == tier_idx),
            snapshots=sum(1 for block in blocks if block.snapshot_id is not None and block.snapshot_tier == tier_idx),
            promotions=tier.promotions,
            demotions=tier.demotions,
        )

    def lru_keys(self) -> list[bytes]:
        """Block keys, least recently used first (for tests and inspection)."""
        with self._lock:
            return list(self._blocks)

    def check_invariants(self) -> None:
        """Raise RuntimeError listing every broken invariant: budget, parents present and more recent than
        their children, depths, child and pin counts, every used slot owned by exactly one block (or, for
        snapshots, reserved by a request). For tests; O(blocks)."""
        with self._lock:
            problems = []
            for tier in self._tiers:
                if tier.bytes_used > tier.max_bytes:
                    problems.append(f"{tier.name} tier holds {tier.bytes_used} bytes > its budget {tier.max_bytes}")
            rank = {key: i for i, key in enumerate(self._blocks)}
            num_children = dict.fromkeys(self._blocks, 0)
            for key, block in self._blocks.items():
                if block.num_pins < 0:
                    problems.append(f"block {key.hex()[:8]} has num_pins {block.num_pins}")
                if block.parent is None:
                    if block.depth != 1:
                        problems.append(f"root block {key.hex()[:8]} has depth {block.depth}")
                    continue
                if self._blocks.get(block.parent.key) is not block.parent:
                    problems.append(f"block {key.hex()[:8]} has an evicted parent")
                    continue
                num_children[block.parent.key] += 1
                if block.depth != block.parent.depth + 1:
                    problems.append(f"block {key.hex()[:8]} has depth {block.depth} under depth {block.parent.depth}")
                if rank[block.parent.key] < rank[key]:
                    problems.append(f"block {key.hex()[:8]} is more recently used than its parent")
            for key, block in self._blocks.items():
                if block.num_children != num_children[key]:
                    problems.append(f"block {key.hex()[:8]} counts {block.num_children} children, has {num_children[key]}")
            for tier_idx, tier in enumerate(self._tiers):
                page_ids = [block.page_id for block in self._blocks.values() if block.page_tier == tier_idx]
                snapshot_ids = [
                    block.snapshot_id for block in self._blocks.values()
                    if block.snapshot_id is not None and block.snapshot_tier == tier_idx
                ]
                if tier_idx == DEVICE:  # requests reserve snapshot slots on the device only
                    if set(snapshot_ids) & self._reserved:
                        problems.append(f"snapshot slots both owned and reserved: {sorted(set(snapshot_ids) & self._reserved)}")
                    snapshot_ids += list(self._reserved)
                for name, ids in (("page", page_ids), ("snapshot", snapshot_ids)):
                    pool = tier.pool(name)
                    if len(set(ids)) != len(ids) or pool.num_used != len(ids):
                        problems.append(
                            f"{tier.name} tier: {pool.num_used} {name} slots in use, {len(set(ids))} distinct held by {len(ids)} owners"
                        )
                    if any(pool.is_free(slot_id) for slot_id in ids):
                        problems.append(f"{tier.name} tier: {name} slots both held and free")
            tiers = {block.page_tier for block in self._blocks.values()} | {block.snapshot_tier for block in self._blocks.values()}
            if not tiers <= set(range(len(self._tiers))):
                problems.append(f"blocks in tiers {sorted(tiers)}, the store has {len(self._tiers)}")
            if problems:
                raise RuntimeError("PrefixStore invariants broken: " + "; ".join(problems))

    def clear(self) -> None:
        """Drop every unpinned block (pinned ones stay until their caches finish); counters stay."""
        with self._lock:
            counters = dict(self._counters)
            while (victim := lru_victim(self._blocks.values(), lambda block: (True, False), lambda block: block.num_children == 0)) is not None:
                self._evict(victim)
            self._counters = counters


_default_store: PrefixStore | None = None
_default_store_lock = threading.Lock()


def get_default_store() -> PrefixStore:
    """The process-wide store shared by every `HybridPrefixCache` created without `store=`."""
    global _default_store
    with _default_store_lock:
        if _default_store is None:
            _default_store = PrefixStore()
        return _default_store


def set_default_store(store: PrefixStore | None) -> None:
    """Replace the process-wide store (None: a fresh default one is made on next use)."""
    global _default_store
    if store is not None and not isinstance(store, PrefixStore):
        raise TypeError(f"set_default_store expects a PrefixStore or None, got {type(store).__name__}")
    with _default_store_lock:
        _default_store = store
