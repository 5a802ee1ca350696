"""Fixed-size slots in per-layer tensors: the storage under the prefix store's K/V pages and state snapshots.

A pool keeps, per cache tensor (one per layer and kind), a list of chunks `[chunk_slots, *slot_shape]` on
that layer's own device. Growing adds a chunk and never moves the slots already handed out, so a slot's
views stay valid while it is owned: a request can write its snapshots into reserved slots, and a reader
can copy a pinned page, without holding the store's lock. The pool never decides what to free (the store
does, under its lock).
"""

import bisect

import torch

from ..layout import TensorSpec

INITIAL_CAPACITY = 16


class SlotPool:
    """Slots of `[*spec.shape]`, one per spec for every slot id, grown by doubling up to `max_slots`.

    Memory grows with use instead of reserving the whole budget up front, which matters on GPUs where an
    allocation is never lazy.
    """

    def __init__(self, specs: list[TensorSpec], max_slots: int, pin_memory: bool = False):
        self.specs = specs
        self.max_slots = max_slots
        self.pin_memory = pin_memory  # page-locked host memory (a host tier under a CUDA model)
        self.slot_bytes = sum(spec.num_bytes for spec in specs)
        self._chunks: list[list[torch.Tensor]] = []  # per chunk: one tensor per spec
        self._chunk_starts: list[int] = []  # first slot id of each chunk
        self.capacity = 0
        self._free_ids: list[int] = []
        self.num_used = 0
        self._grow()

    def allocate(self) -> int | None:
        """A free slot id, or None when `max_slots` are in use."""
        if not self._free_ids and not self._grow():
            return None
        self.num_used += 1
        return self._free_ids.pop()

    def free(self, slot_id: int) -> None:
        self._free_ids.append(slot_id)
        self.num_used -= 1

    def is_free(self, slot_id: int) -> bool:
        return slot_id in self._free_ids

    def views(self, slot_id: int) -> list[torch.Tensor]:
        """One `[*spec.shape]` view per spec of slot `slot_id`: stable for as long as the pool lives."""
        chunk_idx = bisect.bisect_right(self._chunk_starts, slot_id) - 1
        offset = slot_id - self._chunk_starts[chunk_idx]
        return [tensor[offset] for tensor in self._chunks[chunk_idx]]

    def _grow(self) -> bool:
        num_new = min(max(self.capacity, INITIAL_CAPACITY), self.max_slots - self.capacity)
        if num_new <= 0:
            return False
        chunk = [
            torch.empty((num_new, *spec.shape), dtype=spec.dtype, device=spec.device, pin_memory=self.pin_memory)
            for spec in self.specs
        ]
        self._chunks.append(chunk)
        self._chunk_starts.append(self.capacity)
        # Lowest ids first: allocate() pops from the end.
        self._free_ids = list(range(self.capacity + num_new - 1, self.capacity - 1, -1)) + self._free_ids
        self.capacity += num_new
        return True
