"""`StateSnapshots`: the recurrent layers' states at block boundaries, keyed by transformers' own chained
block hash of the tokens before the boundary, so that a hit on its paged K/V blocks (block sharing) can
restore the state that goes with them. Least recently used first out, within a byte budget."""

from collections import OrderedDict

import torch

LayerStates = dict[int, tuple[torch.Tensor, torch.Tensor | None]]  # layer -> (conv, recurrent; None: a short conv)


class StateSnapshots:
    """Snapshots of every linear layer at a boundary. A forward stages each layer's states as it runs them
    (`stage`); `commit` keeps the snapshots every layer wrote, so a forward that failed half-way leaves
    none behind."""

    def __init__(self, layers: list[int], bytes_per_snapshot: int, max_bytes: int):
        self.layers = set(layers)
        self.bytes_per_snapshot = bytes_per_snapshot
        self.capacity = max_bytes // bytes_per_snapshot if bytes_per_snapshot else 0
        self._entries: OrderedDict[int, LayerStates] = OrderedDict()
        self._staged: dict[int, LayerStates] = {}
        self.saved = self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: int) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        return len(self._entries) * self.bytes_per_snapshot

    def stage(self, key: int, layer: int, conv: torch.Tensor, recurrent: torch.Tensor | None) -> None:
        """conv `[conv_dim, conv_width]`, recurrent `[Hv, K, V]` (None for a short conv): copies the forward may
        not overwrite."""
        if self.capacity:
            self._staged.setdefault(key, {})[layer] = (conv, recurrent)

    def commit(self) -> None:
        for key, states in self._staged.items():
            if states.keys() == self.layers and key not in self._entries:
                self._entries[key] = states
                self.saved += 1
        self._staged.clear()
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
            self.evicted += 1

    def discard_staged(self) -> None:
        self._staged.clear()

    def get(self, key: int) -> LayerStates | None:
        states = self._entries.get(key)
        if states is not None:
            self._entries.move_to_end(key)
        return states

    def clear(self) -> None:
        self._entries.clear()
        self._staged.clear()
