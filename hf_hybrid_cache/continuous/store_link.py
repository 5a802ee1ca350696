"""`StoreLink`: continuous batching's side of the `PrefixStore` that `generate()` uses, so that both engines
share one store (its host tier, its Redis tier, its file) and one eviction policy.

- Keys: the store's chained block keys (`store/hashing.py`: model fingerprint, namespace, the peft adapters'
  state), so a block a `generate()` process published serves a continuous-batching replica and the reverse.
- Reads: a request's chain is read from the remote tier into the local ones when it is added, in the
  caller's thread (`prefetch`); the engine's loop then looks up the local tiers only, so a slow Redis never
  holds it up. A hit is pinned while its pages and snapshot are copied into the engine.
- Writes: the states a forward takes at its checkpoints go straight into store snapshot slots reserved for
  them (counted in the store's budget: reserving evicts by the store's policy). Once the forward has run
  through, the request's complete blocks are published with them; the store writes new blocks through to its
  remote tier from its own thread, within a bound on pending bytes (`redis_tier.py`).
"""

import weakref

import torch

from ..layout import model_layout
from ..models.peft_state import adapter_state
from ..store.block_index import Hit
from ..store.fingerprint import model_fingerprint
from ..store.hashing import extend_block_keys, root_key
from ..store.prefix_store import PrefixStore
from .state_slots import StateSlots

LayerStates = tuple[torch.Tensor, torch.Tensor | None]  # conv, recurrent (None: a short conv)


class StoreLink:
    """One model's continuous batching on `store`, under `namespace` (module docstring).

    Raises ValueError when the store holds blocks of another layout (`PrefixStore.bind`).
    """

    def __init__(self, store: PrefixStore, model: torch.nn.Module, namespace: str | None):
        params = list(model.parameters())
        self.layout = model_layout(model, params)
        self._fingerprint = model_fingerprint(model, params)
        store.bind(self.layout, self._fingerprint)
        self.store = store
        self.namespace = namespace
        self._model = weakref.ref(model)  # the registry outlives no model
        positions = {(layer.layer_idx, state.kind): pos for pos, (layer, state) in
                     enumerate((layer, state) for layer in self.layout.recurrent for state in layer.states)}
        self._positions = positions
        self.num_states = len(positions)
        self.attention_layers = [layer.layer_idx for layer in self.layout.attention]

    @property
    def block_size(self) -> int:
        return self.store.block_size

    @property
    def mamba_cache_mode(self) -> str:
        return self.store.mamba_cache_mode

    def root(self) -> bytes | None:
        """The key a request's chain starts from now; None while the model's adapters cannot be keyed
        (`peft_state.adapter_state`): such a request is neither served nor published."""
        model = self._model()
        state = None if model is None else adapter_state(model)
        return None if state is None else root_key(self._fingerprint, self.namespace, state)

    def keys(self, keys: list[bytes], root: bytes, token_ids: list[int], num_blocks: int) -> list[bytes]:
        """`keys` (the first keys of `token_ids`' chain from `root`) extended in place to `num_blocks`."""
        return extend_block_keys(keys, root, token_ids, self.block_size, num_blocks)

    def prefetch(self, token_ids: list[int]) -> None:
        """Read the chain of a prompt about to be added from the remote tier into the local ones."""
        root = self.root() if self.store.remote is not None else None
        if root is not None:
            self.store.prefetch(self.keys([], root, token_ids, (len(token_ids) - 1) // self.block_size))

    def lookup(self, keys: list[bytes], prompt_len: int) -> Hit:
        """The deepest block of `keys` in the local tiers with a snapshot, pinned (`store.release` it)."""
        return self.store.lookup(keys, num_query_tokens=prompt_len, read_remote=False)

    def pages(self, hit: Hit, first_block: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per attention layer (`attention_layers`), the keys and values `[num_kv_heads, num_tokens, head_dim]`
        of `hit`'s blocks from `first_block` on (copies)."""
        return [tuple(pair) for pair in self.store.read_pages(Hit(hit.blocks[first_block:]))]

    def restore(self, hit: Hit, slots: StateSlots, slot: int) -> None:
        """Copy the snapshot of `hit`'s last block into state slot `slot`."""
        snapshot = self.store.read_snapshot(hit)
        for layer_idx in slots.specs:
            slots.conv[layer_idx][slot].copy_(snapshot[self._positions[(layer_idx, "conv")]])
            if layer_idx in slots.recurrent:
                slots.recurrent[layer_idx][slot].copy_(snapshot[self._positions[(layer_idx, "recurrent")]])

    def reserve(self, num_new_pages: int) -> int | None:
        """A store snapshot slot for a checkpoint (None: no room; that checkpoint is not taken)."""
        return self.store.reserve_snapshot(num_new_pages)

    def write_state(self, slot_id: int, layer_idx: int, conv: torch.Tensor, recurrent: torch.Tensor | None) -> int:
        """Copy one layer's states at a checkpoint (conv `[conv_dim, conv_width]`, recurrent `[Hv, K, V]` or None)
        into a reserved slot; returns how many states that was."""
        views = self.store.snapshot_views(slot_id)
        views[self._positions[(layer_idx, "conv")]].copy_(conv)
        if recurrent is None:
            return 1
        views[self._positions[(layer_idx, "recurrent")]].copy_(recurrent)
        return 2

    def release(self, slot_ids) -> None:
        self.store.release_snapshots(slot_ids)
