"""A tier of the prefix store: slot pools for pages and snapshots in one kind of memory, under one budget.

The device tier keeps each tensor on its layer's device; the host tier (`PrefixStore(host_bytes=...)`) keeps
the same slots in CPU memory, pinned when the model is on CUDA so that moving a slot either way is a plain
DMA copy. Which entry moves where is the store's decision (`prefix_store.py`).
"""

from dataclasses import replace

import torch

from ..layout import TensorSpec
from .slot_pool import SlotPool

DEVICE = 0  # index of the device tier in `PrefixStore._tiers`; the host tier, when there is one, follows it


class StoreTier:
    """Pages `[*page_spec.shape]` and snapshots `[*state_spec.shape]`, together within `max_bytes`."""

    def __init__(self, name: str, page_specs: list[TensorSpec], snapshot_specs: list[TensorSpec], max_bytes: int):
        self.name = name
        self.max_bytes = max_bytes
        # Page-locked host memory only under a CUDA model: copies to and from it are then plain DMA.
        pin_memory = name == "host" and any(spec.device.type == "cuda" for spec in page_specs + snapshot_specs)
        if name == "host":
            page_specs, snapshot_specs = _on_host(page_specs), _on_host(snapshot_specs)
        page_bytes = sum(spec.num_bytes for spec in page_specs)
        snapshot_bytes = sum(spec.num_bytes for spec in snapshot_specs)
        self.pages = SlotPool(page_specs, max_slots=max_bytes // max(page_bytes, 1), pin_memory=pin_memory)
        self.snapshots = SlotPool(snapshot_specs, max_slots=max_bytes // max(snapshot_bytes, 1), pin_memory=pin_memory)
        self.promotions = 0  # entries (pages or snapshots) moved into this tier
        self.demotions = 0  # entries moved out of this tier to a lower one

    @property
    def bytes_used(self) -> int:
        return self.pages.num_used * self.pages.slot_bytes + self.snapshots.num_used * self.snapshots.slot_bytes

    def pool(self, kind: str) -> SlotPool:
        """The pool of "page" or "snapshot" slots."""
        return self.pages if kind == "page" else self.snapshots


def _on_host(specs: list[TensorSpec]) -> list[TensorSpec]:
    return [replace(spec, device=torch.device("cpu")) for spec in specs]
