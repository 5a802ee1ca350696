"""Which entry the prefix store evicts next, per policy.

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
    """Evict `block`'s snapshot only (`snapshot_only`) or the whole leaf block (a `prefix_store.Block`)."""

    block: object
    snapshot_only: bool = False


@dataclass
class _Candidate:
    victim: Victim
    last_used: int
    tokens_per_byte: float
    superseded: bool = False
    utility: float = field(default=0.0)


def lru_victim(blocks_least_recent_first) -> Victim | None:
    """The least recently used unpinned leaf. Blocks are touched deepest first, so an unpinned inner block
    is always more recent than its unpinned descendants: leaf-first is also least-recently-used order."""
    for block in blocks_least_recent_first:
        if not block.num_pins and block.num_children == 0:
            return Victim(block)
    return None


def cost_victim(blocks, block_size: int, page_bytes: int, snapshot_bytes: int, needs_snapshots: bool) -> Victim | None:
    """The unpinned snapshot or leaf block of lowest utility (see the module docstring)."""
    candidates = []
    for block in blocks:
        if block.num_pins:
            continue
        saved_tokens = block.depth * block_size
        if block.snapshot_id is not None:
            candidates.append(
                _Candidate(Victim(block, snapshot_only=True), block.snapshot_used, saved_tokens / snapshot_bytes,
                           superseded=block.num_children == 1)
            )
        if block.num_children == 0:
            useful = block.snapshot_id is not None or not needs_snapshots
            num_bytes = page_bytes + (snapshot_bytes if block.snapshot_id is not None else 0)
            candidates.append(
                _Candidate(Victim(block), block.page_used, saved_tokens / num_bytes if useful else 0.0, superseded=not useful)
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
