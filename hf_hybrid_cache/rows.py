"""The rows of a batched `HybridPrefixCache` (`batch.py`): batch-1 caches' layers laid side by side in one
cache, left padded, and one row of it seen again as a batch-1 cache (views), for that row's snapshots and
publish. Works on transformers' own layer classes; no store here.
"""

from typing import TYPE_CHECKING

import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer, LinearAttentionCacheLayerMixin

from . import seams

if TYPE_CHECKING:
    from .cache import HybridPrefixCache


def stack_layers(cache: "HybridPrefixCache", rows: list["HybridPrefixCache"]) -> None:
    """Lay the live states of `rows` (one per row of the batch, a cache twice for a repeated prompt) side by
    side in `cache`'s layers: K/V right-aligned on `cache`'s columns (zeros in the left padding, which the
    attention mask hides), sliding windows right-aligned, recurrent and conv states stacked (a row that
    holds nothing keeps zeros, the state before any token)."""
    for layer_idx, layer in enumerate(cache.layers):
        row_layers = [row.layers[layer_idx] for row in rows]
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            for state_idx in range(layer.number_of_states):
                for kind in ("conv", "recurrent"):
                    states = [getattr(row_layer, f"{kind}_states")[state_idx] for row_layer in row_layers]
                    known = next((state for state in states if state is not None), None)
                    if known is None:
                        continue
                    stacked = torch.stack([known.new_zeros(known.shape[1:]) if s is None else s[0] for s in states])
                    layer.lazy_initialization(**{f"{kind}_states": stacked}, state_idx=state_idx)
                    getattr(layer, f"{kind}_states")[state_idx].copy_(stacked)
                layer.has_previous_state[state_idx] = any(row_layer.has_previous_state[state_idx] for row_layer in row_layers)
            seams.set_token_count(layer, cache.num_seen_tokens)
        if isinstance(layer, DynamicLayer):
            held = [row_layer for row_layer in row_layers if row_layer.is_initialized and row_layer.keys.numel()]
            if not held:
                continue
            width = max(row_layer.keys.shape[-2] for row_layer in held)
            stacked = []
            for name in ("keys", "values"):  # their head dims may differ (MLA)
                sample = getattr(held[0], name)
                out = sample.new_zeros((len(rows), sample.shape[1], width, sample.shape[3]))
                for s, row_layer in enumerate(row_layers):
                    if row_layer in held:
                        tensor = getattr(row_layer, name)
                        out[s, :, width - tensor.shape[-2] :] = tensor[0]
                stacked.append(out)
            layer.lazy_initialization(*stacked)
            layer.keys, layer.values = stacked
            if isinstance(layer, DynamicSlidingWindowLayer):
                layer.cumulative_length = cache.num_seen_tokens


def bind_row(cache: "HybridPrefixCache", row: "HybridPrefixCache", row_idx: int, offset: int) -> None:
    """Make `row`'s layers views of row `row_idx` of `cache`'s (its tokens from column `offset`), so that the
    row cache snapshots and publishes what the batch computed for it."""
    row.num_seen_tokens = cache.num_seen_tokens - offset
    for layer, row_layer in zip(cache.layers, row.layers):
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            for state_idx in range(layer.number_of_states):
                for kind in ("conv", "recurrent"):
                    state = getattr(layer, f"{kind}_states")[state_idx]
                    if state is not None:
                        getattr(row_layer, f"{kind}_states")[state_idx] = state[row_idx : row_idx + 1]
                        getattr(row_layer, f"is_{kind}_states_initialized")[state_idx] = True
                row_layer.has_previous_state[state_idx] = layer.has_previous_state[state_idx]
            seams.set_token_count(row_layer, row.num_seen_tokens)
        if isinstance(layer, DynamicLayer) and layer.is_initialized:
            # A sliding layer's columns are the batch's last ones: the row's are the last it has seen.
            first = layer.keys.shape[-2] - min(row.num_seen_tokens, layer.keys.shape[-2])
            if not isinstance(layer, DynamicSlidingWindowLayer):
                first = offset
            row_layer.is_initialized = True
            row_layer.keys = layer.keys[row_idx : row_idx + 1, :, first:]
            row_layer.values = layer.values[row_idx : row_idx + 1, :, first:]
