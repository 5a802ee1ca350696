"""`PrefixStore`: the one public face of the store, over a block index (`block_index.py`: which prefixes are
cached) and a tier stack (`tier_stack.py`: where their K/V pages and recurrent-state snapshots live, and what
is evicted). It owns the lock: every call below runs under it, except the slot reads a pinned hit allows.

Blocks form a tree through their chained keys (`hashing.py`); a block holds one K/V page for all attention
layers and, optionally, one snapshot of all recurrent layers (the state after its last token). Live caches
pin the blocks they were served from; a request writes the snapshots it takes straight into slots it
reserved (counted in the budget), handed to the blocks when it publishes.
"""

import os
import threading
from collections.abc import Callable, Container

import torch

from ..layout import ModelLayout, TensorSpec
from .block_index import BlockIndex, HeldBlock, Hit, pin, unpin
from .eviction import EVICTION_POLICIES, Victim, make_policy
from .modes import MAMBA_CACHE_MODES
from .remote import RemoteTier
from .tier_stack import TierStack

DEFAULT_BLOCK_SIZE = 64
DEFAULT_MAX_BYTES = 1 << 30
# Chosen with benchmarks/trace.py: branch with cost-aware eviction serves the most tokens at every budget.
DEFAULT_EVICTION = "cost"


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
        remote: a tier shared with other processes and machines, below the local ones: a Redis URL
            (`redis://host:6379/0`, `rediss://user:password@host:6380/0`; see `redis_tier.RedisTier` for its
            settings), a `RemoteTier`, or None (none). Published blocks are written to it off the request's
            path; a local miss reads the rest of the chain from it. Close the store (`close()`) to flush.

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
        remote: "RemoteTier | str | None" = None,
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
        if isinstance(remote, str):
            from .redis_tier import RedisTier  # imports redis-py only when asked for

            remote = RedisTier(remote)
        if remote is not None and not isinstance(remote, RemoteTier):
            raise TypeError(f"remote must be a Redis URL, a RemoteTier or None, got {type(remote).__name__}")
        self.block_size = block_size
        self.mamba_cache_mode = mamba_cache_mode
        self.max_bytes = max_bytes
        self.eviction = eviction
        self.host_bytes = host_bytes
        self.remote = remote
        self.layout: ModelLayout | None = None
        self.model_fingerprints: set[str] = set()  # hex fingerprints of the models bound so far (saved in files)
        self._lock = threading.RLock()
        self._index = BlockIndex()
        self._tiers: TierStack | None = None  # made by `bind`, once the layout is known
        self._page_axes: list[int] = []  # per page tensor, its token axis (`bind`)
        self._page_groups: list[int] = []  # per attention layer, how many page tensors it has
        self._counters = dict(queries=0, query_tokens=0, hit_tokens=0)

    def __repr__(self) -> str:
        stats = self.stats()
        return (
            f"PrefixStore(block_size={self.block_size}, mamba_cache_mode={self.mamba_cache_mode!r}, "
            f"eviction={self.eviction!r}, blocks={stats['blocks']}, snapshots={stats['snapshots']}, "
            f"bytes_used={stats['bytes_used']:,}/{self.max_bytes:,}, hit_rate={stats['hit_rate']:.2f})"
        )

    def _repr_html_(self) -> str:
        from ..integrations.display import html_table, store_rows  # notebooks only

        return html_table("PrefixStore", store_rows(self.stats()))

    # -- binding -------------------------------------------------------------------------------------

    def bind(self, layout: ModelLayout, model_fingerprint: bytes | None = None) -> None:
        """Fix the store's layout on first use; refuse a model whose cache has another layout."""
        with self._lock:
            if model_fingerprint is not None and self.layout in (None, layout):
                self.model_fingerprints.add(model_fingerprint.hex())
            if self.layout is None:
                # Per attention layer, its keys then its values `[num_kv_heads, block_size, head_dim]`, then an
                # indexed layer's extras (`ExtraSpec.page_shape`); (spec, token axis) each.
                page_parts = [
                    [(TensorSpec((spec.shape[0], self.block_size, *spec.shape[1:]), spec.dtype, spec.device), 1)
                     for spec in layer.kv]
                    + [(TensorSpec(extra.page_shape(self.block_size), extra.tensor.dtype, extra.tensor.device),
                        extra.page_token_axis) for extra in layer.extras]
                    for layer in layout.attention
                ]
                page_specs = [spec for group in page_parts for spec, _ in group]
                self._page_axes = [axis for group in page_parts for _, axis in group]
                self._page_groups = [len(group) for group in page_parts]
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
                policy = make_policy(self.eviction, self.block_size, page_bytes, snapshot_bytes, bool(snapshot_specs))
                budgets = [("device", self.max_bytes)] + ([("host", self.host_bytes)] if self.host_bytes else [])
                self._tiers = TierStack(self._index, page_specs, snapshot_specs, budgets, policy, self.remote)
                if self.remote is not None:
                    self.remote.bind(page_specs, snapshot_specs)
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
        return self._tiers.device.pages.specs if self._tiers else []

    @property
    def snapshot_specs(self) -> list[TensorSpec]:
        """A snapshot's tensors, in `layout.state_specs` order."""
        return self._tiers.device.snapshots.specs if self._tiers else []

    @property
    def page_bytes(self) -> int:
        return self._tiers.page_bytes if self._tiers else 0

    @property
    def snapshot_bytes(self) -> int:
        return self._tiers.snapshot_bytes if self._tiers else 0

    @property
    def bytes_used(self) -> int:
        """Bytes held in the device tier (within `max_bytes`); see `stats()["tiers"]` for each tier."""
        return self._tiers.device.bytes_used if self._tiers else 0

    # -- lookup ----------------------------------------------------------------------------------------

    def lookup(
        self,
        keys: list[bytes],
        num_query_tokens: int,
        may_end_after: Container[int] | None = None,
        read_remote: bool = True,
    ) -> Hit:
        """Pin and return the longest chain of `keys` that ends on a block with a snapshot (any block, for a
        model without recurrent layers).

        `keys` are the block keys of the usable prefix (the caller leaves at least one token to compute);
        `may_end_after`, if given, the numbers of blocks a hit may span (not one that cuts an image). Blocks
        the local tiers lack are read from the remote tier, if any, outside the lock (`prefetch`), unless
        `read_remote` is False (continuous batching prefetches off its engine's loop instead).
        """
        if read_remote:
            self.prefetch(keys)
        with self._lock:
            self._counters["queries"] += 1
            self._counters["query_tokens"] += num_query_tokens
            chain, best = self._index.match(keys), 0
            for depth, block in enumerate(chain, start=1):
                if (block.snapshot_id is not None or not self.needs_snapshots) and (
                    may_end_after is None or depth in may_end_after
                ):
                    best = depth
            hit = Hit(chain[:best], num_matched=len(chain))
            pin(hit.blocks)
            if self._tiers is not None:
                self._tiers.promote(hit)
            self._index.touch(hit.blocks)
            if hit.blocks:
                hit.blocks[-1].snapshot_used = self._index.clock
            self._counters["hit_tokens"] += best * self.block_size
            return hit

    def prefetch(self, keys: list[bytes]) -> None:
        """Read the blocks of `keys` the local tiers lack from the remote tier, if any, into the local tiers
        (unpinned: a later `lookup` finds them unless evicted meanwhile). Outside the lock, so a slow remote
        holds up only the caller; a dead or garbage one is a miss (`redis_tier.py`)."""
        if self.remote is None or self._tiers is None:
            return
        with self._lock:
            local = self._index.match(keys)
        if len(local) < len(keys):
            fetched = self.remote.read_chain(keys[len(local):], needs_snapshot=self.needs_snapshots)
            if fetched:
                with self._lock:
                    parent = self._index.get(keys[len(local) - 1]) if local else None
                    if parent is not None or not local:
                        self._tiers.adopt_remote(parent, fetched)

    def count_shared(self, num_query_tokens: int, num_hit_tokens: int) -> None:
        """Count a prompt served from another row of the same call (a repeated prompt, a sample) as a query
        whose first `num_hit_tokens` were not computed."""
        with self._lock:
            self._counters["queries"] += 1
            self._counters["query_tokens"] += num_query_tokens
            self._counters["hit_tokens"] += num_hit_tokens

    def release(self, hit: Hit) -> None:
        """Unpin the blocks of `hit`; call once per `lookup`."""
        with self._lock:
            unpin(hit.blocks)
            hit.blocks = []

    def read_pages(self, hit: Hit) -> list[tuple[torch.Tensor, ...]]:
        """The paged tensors of `hit`'s blocks per attention layer: keys, values `[num_kv_heads, num_tokens,
        head_dim]`, then an indexed layer's extras (their tokens along `ExtraSpec.page_token_axis`).

        Safe without the lock: pinned pages are never freed nor rewritten, and slot views never move.
        """
        per_block = [self._tiers.views("page", block.page_id, block.page_tier) for block in hit.blocks]
        # Per cache tensor, the blocks' pages side by side along the tokens (a page the host tier could not
        # give back to the device is copied over here).
        gathered = iter(
            torch.cat([page.to(spec.device) for page in pages], dim=axis)
            for spec, axis, pages in zip(self.page_specs, self._page_axes, zip(*per_block))
        )
        return [tuple(next(gathered) for _ in range(size)) for size in self._page_groups]

    def read_snapshot(self, hit: Hit) -> list[torch.Tensor]:
        """The snapshot of `hit`'s last block: every recurrent state in `layout.state_specs` order.

        Views into the pool, valid while `hit` is pinned (pinned slots are never freed nor rewritten);
        the caller copies them into its live state.
        """
        last = hit.blocks[-1]
        return self._tiers.views("snapshot", last.snapshot_id, last.snapshot_tier)

    def page_views(self, page_id: int, tier: int = 0) -> list[torch.Tensor]:
        """A page slot's tensors (`page_specs`, on the tier's memory); stable while the slot is owned."""
        return self._tiers.views("page", page_id, tier)

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
            return self._tiers.reserve_snapshot(num_new_pages)

    def has_room(self, num_snapshots: int, num_pages: int) -> bool:
        """Whether that many more snapshots and pages fit in the budget without evicting anything."""
        with self._lock:
            return self.bytes_used + num_snapshots * self.snapshot_bytes + num_pages * self.page_bytes <= self.max_bytes

    def snapshot_views(self, slot_id: int, tier: int = 0) -> list[torch.Tensor]:
        """The slot's tensors in `layout.state_specs` order; stable while the slot is reserved or owned."""
        return self._tiers.views("snapshot", slot_id, tier)

    def release_snapshots(self, slot_ids) -> None:
        """Give back reserved snapshot slots that will not be published (a failed or partial request)."""
        with self._lock:
            self._tiers.release_snapshots(slot_ids)

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
            the budget is exhausted (all else pinned) publishing stops at that block. New entries are
            written through to the remote tier, if any.
        """
        with self._lock:
            chain, inserted, given = [], [], []  # given: blocks that took one of the request's snapshots
            pending = dict(snapshots)
            try:
                for block_idx, key in enumerate(keys):
                    block = self._index.get(key)
                    if block is None:
                        page_id = self._tiers.new_page(lambda views: write_page(block_idx, views))
                        if page_id is None:
                            break
                        block = self._index.add(key, chain[-1] if chain else None, page_id)
                        inserted.append(block)
                    # Pinned while this publish runs, so making room for the next block never evicts it.
                    pin([block])
                    chain.append(block)
                    if block_idx in pending and block.snapshot_id is None:
                        self._tiers.give_snapshot(block, pending.pop(block_idx))
                        given.append(block)
            finally:
                unpin(chain)
                self._index.touch(chain)
                for block in given:
                    block.snapshot_used = self._index.clock
                self._tiers.release_snapshots(pending.values())
            for block in dict.fromkeys(inserted + given):
                self._tiers.write_remote(block)
            return len(inserted)

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
        remote: "RemoteTier | str | None" = None,
    ) -> "PrefixStore":
        """A store with the blocks `save` wrote to `path`: the most recently used ones that fit, in the device
        tier within `max_bytes` and then in the host tier within `host_bytes` (None: the saved budgets).
        `device`: where every tensor goes instead of where it was saved (for example "cpu" for a file saved on
        a GPU). `remote`: as for the constructor (a file never holds one).

        Raises FileNotFoundError, or ValueError naming the file when it is truncated, not a prefix store or
        inconsistent with its own index. Entries whose checksum fails are dropped with a warning and never
        served. A model other than the saved one gets no hits (block keys digest the model), or the layout
        error of `bind` when its cache has another shape.
        """
        from .persistence import load_store

        return load_store(cls, path, max_bytes=max_bytes, host_bytes=host_bytes, device=device, remote=remote)

    def hold_all(self) -> tuple[Hit, list[HeldBlock]]:
        """Pin every block (release the returned `Hit` when done) and describe them least recently used first."""
        with self._lock:
            hit = Hit(list(self._index))
            pin(hit.blocks)
            entries = [
                HeldBlock(block.key, block.parent.key if block.parent else None, block.page_id, block.page_tier,
                          block.snapshot_id, block.snapshot_tier, block.page_used, block.snapshot_used, block.branched)
                for block in hit.blocks
            ]
            return hit, entries

    # -- inspection ------------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Counters and sizes: queries, query_tokens, hit_tokens, hit_rate, blocks, snapshots,
        reserved_snapshots, pinned_blocks, bytes_used, max_bytes, page_bytes, snapshot_bytes, evictions
        (blocks dropped), snapshot_evictions (snapshots dropped, pages kept), block_size, mode, eviction,
        and `tiers`: per tier ("device", "host" when `host_bytes`), its bytes_used, max_bytes, blocks (pages
        held there), snapshots, promotions (entries moved in on a hit) and demotions (entries moved down);
        with a remote tier, `remote`: its own counters."""
        with self._lock:
            query_tokens = self._counters["query_tokens"]
            blocks = list(self._index)
            tiers = self._tiers.tiers if self._tiers else []
            stats = dict(
                **self._counters,
                hit_rate=self._counters["hit_tokens"] / query_tokens if query_tokens else 0.0,
                evictions=self._tiers.evictions if self._tiers else 0,
                snapshot_evictions=self._tiers.snapshot_evictions if self._tiers else 0,
                blocks=len(blocks),
                snapshots=sum(1 for block in blocks if block.snapshot_id is not None),
                reserved_snapshots=len(self._tiers.reserved) if self._tiers else 0,
                pinned_blocks=sum(1 for block in blocks if block.num_pins),
                bytes_used=self.bytes_used,
                max_bytes=self.max_bytes,
                page_bytes=self.page_bytes,
                snapshot_bytes=self.snapshot_bytes,
                block_size=self.block_size,
                mamba_cache_mode=self.mamba_cache_mode,
                eviction=self.eviction,
                tiers={tier.name: _tier_stats(tier_idx, tier, blocks) for tier_idx, tier in enumerate(tiers)},
            )
        if self.remote is not None:
            stats["remote"] = self.remote.stats()
        return stats

    def lru_keys(self) -> list[bytes]:
        """Block keys, least recently used first (for tests and inspection)."""
        with self._lock:
            return self._index.keys()

    def check_invariants(self) -> None:
        """Raise RuntimeError listing every broken invariant: budget, parents present and more recent than
        their children, depths, child and pin counts, every used slot owned by exactly one block (or, for
        snapshots, reserved by a request). For tests; O(blocks)."""
        with self._lock:
            problems = self._index.problems() + (self._tiers.problems() if self._tiers else [])
            if problems:
                raise RuntimeError("PrefixStore invariants broken: " + "; ".join(problems))

    def clear(self) -> None:
        """Drop every unpinned block (pinned ones stay until their caches finish); counters stay."""
        with self._lock:
            if self._tiers is None:
                return
            evictions = self._tiers.evictions, self._tiers.snapshot_evictions
            for block in list(self._index):  # least recent first: children before their parents
                if not block.num_pins and not block.num_children:
                    self._tiers.drop(Victim(block))
            self._tiers.evictions, self._tiers.snapshot_evictions = evictions

    def close(self) -> None:
        """Flush and disconnect the remote tier, if any (local tiers need nothing)."""
        if self.remote is not None:
            self.remote.close()


def _tier_stats(tier_idx: int, tier, blocks) -> dict:
    return dict(
        bytes_used=tier.bytes_used,
        max_bytes=tier.max_bytes,
        blocks=sum(1 for block in blocks if block.page_tier == tier_idx),
        snapshots=sum(1 for block in blocks if block.snapshot_id is not None and block.snapshot_tier == tier_idx),
        promotions=tier.promotions,
        demotions=tier.demotions,
    )


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
