"""Fixed-size slots in per-layer tensors: the storage under the prefix store's K/V pages and GDN snapshots.

A pool owns one tensor per cache layer, `[capacity, *slot_shape]`, each on its layer's own device. Slots are
handed out by id; the pool never decides what to free (the store does, under its lock).
"""

import torch

from .layout import TensorSpec

INITIAL_CAPACITY = 16


class SlotPool:
    """Slots of `[*spec.shape]` in one tensor per spec, grown by doubling up to `max_slots`.

    Growth allocates new tensors and copies the old ones, so slot ids stay valid but tensor addresses do
    not: callers index by id at the time of use. Memory grows with use instead of reserving the whole
    budget up front, which matters on GPUs where an allocation is never lazy.
    """

    def __init__(self, specs: list[TensorSpec], max_slots: int):
        self.specs = specs
        self.max_slots = max_slots
        self.slot_bytes = sum(spec.num_bytes for spec in specs)
        self.tensors = [self._empty(spec, min(INITIAL_CAPACITY, max_slots)) for spec in specs]
        self._free_ids = list(range(min(INITIAL_CAPACITY, max_slots) - 1, -1, -1))
        self.num_used = 0

    @staticmethod
    def _empty(spec: TensorSpec, capacity: int) -> torch.Tensor:
        return torch.empty((capacity, *spec.shape), dtype=spec.dtype, device=spec.device)

    @property
    def capacity(self) -> int:
        return self.tensors[0].shape[0] if self.tensors else 0

    def allocate(self) -> int | None:
        """A free slot id, or None when `max_slots` are in use."""
        if not self._free_ids and not self._grow():
            return None
        self.num_used += 1
        return self._free_ids.pop()

    def free(self, slot_id: int) -> None:
        self._free_ids.append(slot_id)
        self.num_used -= 1

    def _grow(self) -> bool:
        old_capacity = self.capacity
        new_capacity = min(2 * old_capacity, self.max_slots)
        if new_capacity <= old_capacity:
            return False
        grown = []
        for spec, tensor in zip(self.specs, self.tensors):
            bigger = self._empty(spec, new_capacity)
            bigger[:old_capacity].copy_(tensor)
            grown.append(bigger)
        # One assignment: a reader holding the old list still sees consistent (old) tensors.
        self.tensors = grown
        self._free_ids = list(range(new_capacity - 1, old_capacity - 1, -1)) + self._free_ids
        return True
