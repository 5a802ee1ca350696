"""Which entry the prefix store evicts next, per policy.

The tier stack (`tier_stack.py`) asks its policy for a victim in one tier at a time; a victim of the device
tier moves to the host tier when there is one, a victim of the last tier is dropped.

- "lru": the least recently used unpinned leaf block, its page and snapshot together.
- "cost": a block's snapshot and its page are separate entries (a block may keep its page after losing
  its snapshot). Each unpinned candidate gets a utility, recency plus the compute a hit on it saves per
  byte it holds, both scaled to [0, 1] over the candidates (Marconi's FLOP-aware eviction), and the lowest
  goes. What a snapshot saves is what a hit would lose without it: the blocks between it and the nearest
  snapshot above it on its path, where such a hit falls back to (a chat's latest turn over a cached
  system prompt saves only the turns after the prompt). A leaf page beyond the last snapshot saves
  nothing a hit can use (it only marks a path). Entries that can serve no likely hit go before any
  other: such leaf pages, and snapshots on a path that goes on without ever having branched (an earlier
  turn of a chat whose next turn was published: only a request stopping exactly there would use it;
  Marconi keeps states at branch points and leaves only). A block that once had two children stays a
  branch point after one of them is evicted: its prefix is one requests share.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

EVICTION_POLICIES = ("cost", "lru")
# Weight of compute-saved-per-byte against recency in the "cost" utility. On benchmarks/trace.py (seeds
# 0-2, budget 15) 1, 2 and 3 serve within 0.01 of each other, 0.25 and 0.5 up to 0.06 less; 2 is the middle.
EFFICIENCY_WEIGHT = 2.0


@dataclass(frozen=True)
class Victim:
    """Evict `block`'s snapshot only (`snapshot_only`) or its page with the snapshot if the tier holds it
    (a `block_index.Block`)."""

    block: object
    snapshot_only: bool = False


@dataclass
class _Candidate:
    victim: Victim
    last_used: int
    tokens_per_byte: float
    superseded: bool = False
    utility: float = field(default=0.0)


class EvictionPolicy(ABC):
    """Picks the next entry one tier gives up. Called under the store's lock.

    `blocks`: every block of the index, least recently used first; `holds(block)` -> (page in this tier,
    snapshot in this tier); `may_go(block)`: whether its page may leave the tier (no child below it depends
    on the tier keeping it). Pinned blocks are never victims. Returns None when nothing may go.
    """

    name: str

    @abstractmethod
    def victim(self, blocks, holds, may_go) -> Victim | None: ...


class LruPolicy(EvictionPolicy):
    name = "lru"

    def victim(self, blocks, holds, may_go) -> Victim | None:
        return lru_victim(blocks, holds, may_go)


class CostPolicy(EvictionPolicy):
    """Marconi-style utility: recency plus prefill tokens a hit saves per byte (see the module docstring)."""

    name = "cost"

    def __init__(self, block_size: int, page_bytes: int, snapshot_bytes: int, needs_snapshots: bool):
        self.block_size, self.page_bytes, self.snapshot_bytes = block_size, page_bytes, snapshot_bytes
        self.needs_snapshots = needs_snapshots

    def victim(self, blocks, holds, may_go) -> Victim | None:
        return cost_victim(blocks, holds, may_go, self.block_size, self.page_bytes, self.snapshot_bytes, self.needs_snapshots)


def make_policy(name: str, block_size: int, page_bytes: int, snapshot_bytes: int, needs_snapshots: bool) -> EvictionPolicy:
    """The policy called `name` (one of `EVICTION_POLICIES`) for a store of these sizes."""
    if name == "lru":
        return LruPolicy()
    return CostPolicy(block_size, page_bytes, snapshot_bytes, needs_snapshots)


def lru_victim(blocks_least_recent_first, holds, may_go) -> Victim | None:
    """The least recently used unpinned entry of the tier: a block whose page may go (with its snapshot),
    or a snapshot whose page lives elsewhere. Blocks are touched deepest first, so an unpinned inner block is
    always more recent than its unpinned descendants: leaf-first is also least-recently-used order.

    `holds(block)` -> (page in this tier, snapshot in this tier); `may_go(block)`: whether its page may
    leave the tier (no child below it depends on the tier keeping it).
    """
    for block in blocks_least_recent_first:
        if block.num_pins:
            continue
        page_here, snapshot_here = holds(block)
        if page_here and may_go(block):
            return Victim(block)
        if snapshot_here and not page_here:
            return Victim(block, snapshot_only=True)
    return None


def cost_victim(
    blocks, holds, may_go, block_size: int, page_bytes: int, snapshot_bytes: int, needs_snapshots: bool
) -> Victim | None:
    """The unpinned snapshot or page of the tier of lowest utility (see the module docstring); `holds` and
    `may_go` as for `lru_victim`."""
    candidates = []
    fallback_depths: dict[int, int] = {}
    for block in blocks:
        if block.num_pins:
            continue
        page_here, snapshot_here = holds(block)
        saved_tokens = (block.depth - _fallback_depth(block, fallback_depths)) * block_size
        if snapshot_here:
            candidates.append(
                _Candidate(Victim(block, snapshot_only=True), block.snapshot_used, saved_tokens / snapshot_bytes,
                           superseded=block.num_children == 1 and not block.branched)
            )
        if page_here and may_go(block):
            useful = block.snapshot_id is not None or not needs_snapshots
            num_bytes = page_bytes + (snapshot_bytes if snapshot_here else 0)
            candidates.append(
                _Candidate(Victim(block), block.page_used, saved_tokens / num_bytes if useful else 0.0,
                           superseded=not useful and block.num_children == 0)
            )
    if not candidates:
        return None
    oldest = min(c.last_used for c in candidates)
    span = max(c.last_used for c in candidates) - oldest
    best_efficiency = max(c.tokens_per_byte for c in candidates)
    for c in candidates:
        recency = (c.last_used - oldest) / span if span else 1.0
        efficiency = c.tokens_per_byte / best_efficiency if best_efficiency else 0.0
        c.utility = recency + EFFICIENCY_WEIGHT * efficiency
    # Ties: the deeper block first, so that a chain is peeled from its tail.
    return min(candidates, key=lambda c: (not c.superseded, c.utility, -c.victim.block.depth)).victim


def _fallback_depth(block, memo: dict[int, int]) -> int:
    """The depth of `block`'s nearest ancestor with a snapshot (0: none): where a hit falls back to once
    `block`'s own snapshot is gone, so `block` saves only the blocks between the two. `memo` maps the id of
    a block without a snapshot to the answer for its children (one walk per chain per eviction)."""
    path, node = [], block.parent
    while node is not None and node.snapshot_id is None and id(node) not in memo:
        path.append(node)
        node = node.parent
    if node is None:
        depth = 0
    elif node.snapshot_id is not None:
        depth = node.depth
    else:
        depth = memo[id(node)]
    for ancestor in path:
        memo[id(ancestor)] = depth
    return depth
