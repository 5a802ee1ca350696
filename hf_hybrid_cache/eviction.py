"""Which entry the prefix store evicts next, per policy.

Each tier of the store (`tiers.py`) picks its own victims; a victim of the device tier moves to the host
tier when there is one, a victim of the last tier is dropped.

- "lru": the least recently used unpinned leaf block, its page and snapshot together.
- "cost": a block's snapshot and its page are separate entries (a block may keep its page after losing
  its snapshot). Each unpinned candidate gets a utility, recency plus the compute a hit on it saves per
  byte it holds, both scaled to [0, 1] over the candidates (Marconi's FLOP-aware eviction), and the lowest
  goes. A snapshot after d blocks saves d * block_size tokens of prefill; a leaf page beyond the last
  snapshot saves nothing a hit can use (it only marks a path). Entries that can serve no likely hit go
  before any other: such leaf pages, and snapshots on a path that goes on without branching (an earlier
  turn of a chat whose next turn was published: only a request stopping exactly there would use it;
  Marconi keeps states at branch points and leaves only).
"""

from dataclasses import dataclass, field

EVICTION_POLICIES = ("cost", "lru")
# Weight of compute-saved-per-byte against recency in the "cost" utility (best of 0, 0.5, 1 and 3 on
# benchmarks/trace.py: a deeper snapshot saves more, but the shallow shared ones are hit more often).
EFFICIENCY_WEIGHT = 0.5


@dataclass(frozen=True)
class Victim:
    """Evict `block`'s snapshot only (`snapshot_only`) or its page with the snapshot if the tier holds it
    (a `prefix_store.Block`)."""

    block: object
    snapshot_only: bool = False


@dataclass
class _Candidate:
    victim: Victim
    last_used: int
    tokens_per_byte: float
    superseded: bool = False
    utility: float = field(default=0.0)


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
    for block in blocks:
        if block.num_pins:
            continue
        page_here, snapshot_here = holds(block)
        saved_tokens = block.depth * block_size
        if snapshot_here:
            candidates.append(
                _Candidate(Victim(block, snapshot_only=True), block.snapshot_used, saved_tokens / snapshot_bytes,
                           superseded=block.num_children == 1)
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
