"""The seam for a tier below the local ones that other processes and machines may share (a key-value server).

Unlike a local tier it holds entries by block key, not by slot: it may lose any of them at any time (its own
eviction, a restart, another writer), and any read may fail or time out. The tier stack (`tier_stack.py`)
writes every block it publishes through it and, on a local miss, asks it for the rest of the chain. An
implementation never raises from these methods and never returns a value it has not verified: a failure
is a miss.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RemoteBlock:
    """A block read back: its page (the store's `page_specs`, on the host) and, for the last block of a
    chain, its snapshot (`snapshot_specs`) when one was stored."""

    key: bytes
    page: list[torch.Tensor]
    snapshot: list[torch.Tensor] | None = None


class RemoteTier(ABC):
    """A shared tier addressed by block key (keys already digest the model and namespace)."""

    name = "remote"

    def bind(self, page_specs, snapshot_specs) -> None:
        """Called once, when the store learns its layout (the shapes every value must have)."""

    @abstractmethod
    def write(self, key: bytes, parent_key: bytes | None, page: list[torch.Tensor],
              snapshot: list[torch.Tensor] | None) -> None:
        """Queue a block's page (and snapshot, if given) for writing. The tensors are copied before this
        returns (their slots may be reused at once); the write itself happens off the caller's path."""

    @abstractmethod
    def read_chain(self, keys: list[bytes], needs_snapshot: bool) -> list[RemoteBlock]:
        """The longest leading run of `keys` it holds and can serve: every page in it, and the last block's
        snapshot. With `needs_snapshot` (a model with recurrent layers) the run ends on the deepest block
        that has a snapshot; without, snapshots are never read. [] on any failure."""

    def stats(self) -> dict:
        """Counters for `PrefixStore.stats()["remote"]`."""
        return {}

    def close(self) -> None:
        """Flush what is queued (within a bounded time) and let go of connections."""
