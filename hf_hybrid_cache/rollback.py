"""Rolling a `HybridPrefixCache` back over rejected draft tokens (transformers' assisted decoding: prompt lookup,
assistant models), exactly.

A verification forward runs the last accepted token and k drafts in one pass; the one-pass layers
(GatedDeltaNets, short convs) hand over their states after each of its last k positions inside that pass (the
same kernels and offsets that take block-boundary snapshots). `crop(-r)` then restores the states after the forward's first L - r tokens, and cuts
the attention K/V to them. No state is recomputed and no draft's state can reach the store: the snapshots of
boundaries past the accepted tokens are given back.

transformers' own rollback (5.25: `LinearAttentionCacheLayerMixin.crop` over the history `update_recurrent_state`
keeps) holds, for a forward of L tokens and k = `recurrent_states_to_keep` < L, the state before the forward and
the states after its positions L - k + 1 .. L - 1. When all k drafts are rejected, `crop(-k)` restores the state
before the forward instead of the one after its first L - k tokens: the last accepted token (after a prefill,
the whole prompt) is lost from the recurrent state, which is why unpatched greedy prompt lookup leaves plain
greedy. Here the states kept are those after positions L - k .. L - 1 (the state after L is the live one).
"""

import torch

from .layout import WINDOW_KINDS


class DraftRollback:
    """The states a verification forward leaves at its last `num_drafts` positions, per one-pass layer, until the
    `crop` that follows it.

    Args:
        num_drafts: how many tokens a `crop` may remove (transformers' `recurrent_states_to_keep`).
    """

    def __init__(self, num_drafts: int):
        if num_drafts < 1:
            raise ValueError(f"num_drafts must be at least 1, got {num_drafts}")
        self.num_drafts = num_drafts
        self.step_start: int | None = None  # tokens the cache held when the last forward began
        self.step_length = 0
        # position in the step (tokens run) -> layer_idx -> (conv state `[batch, conv_dim, conv_width]`, and
        # for a gated-delta-rule layer its recurrent state `[batch, num_heads, head_k_dim, head_v_dim]`)
        self.states: dict[int, dict[int, tuple[torch.Tensor, ...]]] = {}

    def offsets(self, seq_len: int) -> list[int]:
        """Offsets in `[1, seq_len)` of a coming step after which each layer must hand over its state."""
        return list(range(seq_len - min(self.num_drafts, seq_len - 1), seq_len))

    def begin_step(self, start: int, seq_len: int) -> None:
        """A forward of `seq_len` tokens after `start` starts: what the previous one kept is of no use anymore
        (a crop never removes a whole forward, so `start` tells forwards apart)."""
        self.step_start, self.step_length, self.states = start, seq_len, {}

    def keep(self, layer_idx: int, offset: int, states: tuple[torch.Tensor, ...]) -> None:
        """A layer's states (conv, then recurrent if it has one) after `offset` tokens of the current step, kept
        if a crop may return there."""
        if offset < self.step_length - self.num_drafts:
            return  # a block boundary's snapshot, earlier than any crop can reach
        self.states.setdefault(offset, {})[layer_idx] = tuple(state.clone() for state in states)

    def restore(self, cache, num_tokens_to_remove: int) -> None:
        """Put `cache`'s live state back to before the last `num_tokens_to_remove` tokens of the last forward
        (its layers only; the cache's own bookkeeping is `HybridPrefixCache.crop`'s)."""
        if num_tokens_to_remove == 0 or not cache.layout.recurrent:  # nothing to restore: K/V are cut by the cache
            self.states = {}
            return
        if num_tokens_to_remove > self.num_drafts or num_tokens_to_remove >= max(self.step_length, 1):
            raise ValueError(
                f"cannot remove {num_tokens_to_remove} tokens: the last forward ran {self.step_length} and kept the "
                f"states of its last {self.num_drafts} positions"
            )
        offset = self.step_length - num_tokens_to_remove
        kept = self.states.get(offset, {})
        for spec in cache.layout.recurrent:
            if spec.layer_idx not in kept:
                raise RuntimeError(f"layer {spec.layer_idx} kept no state at offset {offset} of the last forward")
            layer = cache.layers[spec.layer_idx]
            for live, state in zip((layer.conv_states[0], layer.recurrent_states[0]), kept[spec.layer_idx]):
                live.copy_(state)
        self.states = {}


def rollback_refusal(cache) -> str | None:
    """Why `cache` cannot roll back drafts exactly, or None: every recurrent state must be a one-pass layer's (the
    generic path's layers run transformers' own rollback), and sliding windows and indexed attention keep what a
    crop of their K/V alone cannot undo."""
    path = getattr(cache.model, "_hf_hybrid_cache_path", None)
    if path not in ("one-pass", "attention-only"):
        return f"{type(cache.model).__name__} takes the {path} path, whose recurrent layers are transformers' own"
    if any(state.kind in WINDOW_KINDS for layer in cache.layout.recurrent for state in layer.states):
        return "it has sliding-window layers"
    if any(spec.extras for spec in cache.layout.attention):
        return "it has indexed attention layers"
    return None
