"""The prefix store's block index: the tree of cached blocks keyed by chained digests, with their pins,
recency and branch flags.

A block records in which tier and slot its page and snapshot live, but the index holds no tensor and no
budget: memory is the tier stack's (`tier_stack.py`), the lock the facade's (`prefix_store.py`).
"""

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .tiers import DEVICE


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
    # The index's clock when the page / the snapshot last served a request (eviction's recency).
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


class BlockIndex:
    """Blocks by key, least recently used first; a chain is touched deepest first (see `touch`), so that an
    ancestor always ranks as more recent than its descendants and eviction peels a chain from its tail."""

    def __init__(self):
        self._blocks: OrderedDict[bytes, Block] = OrderedDict()
        self.clock = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def __iter__(self) -> Iterator[Block]:
        """Least recently used first."""
        return iter(self._blocks.values())

    def get(self, key: bytes) -> Block | None:
        return self._blocks.get(key)

    def keys(self) -> list[bytes]:
        """Least recently used first."""
        return list(self._blocks)

    def match(self, keys: Iterable[bytes]) -> list[Block]:
        """The blocks of the longest leading run of `keys` the index holds."""
        chain = []
        for key in keys:
            block = self._blocks.get(key)
            if block is None:
                break
            chain.append(block)
        return chain

    def add(self, key: bytes, parent: Block | None, page_id: int, page_tier: int = DEVICE) -> Block:
        """A new block under `parent` (None: a first block), most recently used; its page already written."""
        block = Block(key=key, parent=parent, page_id=page_id, page_tier=page_tier, depth=parent.depth + 1 if parent else 1)
        if parent is not None:
            parent.num_children += 1
            parent.branched |= parent.num_children > 1
        self._blocks[key] = block
        return block

    def remove(self, block: Block) -> None:
        """Forget a leaf block (its slots are the caller's to free)."""
        del self._blocks[block.key]
        if block.parent is not None:
            block.parent.num_children -= 1

    def touch(self, chain: list[Block]) -> None:
        """Mark a chain (root first) as just used; deepest first, see the class docstring."""
        self.clock += 1
        for block in reversed(chain):
            block.page_used = self.clock
            self._blocks.move_to_end(block.key)

    def reorder(self, blocks_least_recent_first: list[Block]) -> None:
        """Set the recency order of every block at once (a store read from a file) and the clock past it."""
        self._blocks = OrderedDict((block.key, block) for block in blocks_least_recent_first)
        self.clock = max((max(block.page_used, block.snapshot_used) for block in self._blocks.values()), default=0)

    def problems(self) -> list[str]:
        """Broken tree invariants: pins, depths, parents present and more recent than their children, child
        counts. O(blocks)."""
        problems = []
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
        return problems


def pin(blocks: Iterable[Block]) -> None:
    for block in blocks:
        block.num_pins += 1


def unpin(blocks: Iterable[Block]) -> None:
    for block in blocks:
        block.num_pins -= 1
