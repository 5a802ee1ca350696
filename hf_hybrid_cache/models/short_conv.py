"""The one-pass gated short conv (LFM2's `ShortConv`: `y = C * conv(B * x)`, B, C and x from one input
projection) on `hf_hybrid_cache.kernels`' causal conv, handing a `HybridPrefixCache` the conv state at every
block boundary inside the step. The layer has no other state: its conv window is all it keeps.

A family adapter (`lfm2.py`) subclasses `PrefixShortConv` together with transformers' own class, whose weights
and attributes it uses (`in_proj`, `conv`, `out_proj`, `conv_kernel_size`, `layer_idx`).
"""

import torch
from transformers.integrations.accelerate import force_accelerate_hooks

from .. import kernels
from .one_pass import OnePassMixer, cached_causal_conv, runs_on_transformers


class PrefixShortConv(OnePassMixer):
    """Mixin placed before transformers' short-conv class."""

    @force_accelerate_hooks("conv")
    def forward(self, hidden_states: torch.Tensor, cache=None, attention_mask=None, **kwargs) -> torch.Tensor:
        """hidden_states `[batch, seq_len, hidden_size]` -> `[batch, seq_len, hidden_size]`."""
        if hasattr(cache, "packed_plan"):  # continuous batching of a patched model (`continuous/paged_cache.py`)
            return self._forward_packed(hidden_states, cache)
        if runs_on_transformers(self, hidden_states, cache, kwargs):
            return super().forward(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
        if attention_mask is not None:
            # The 2D padding mask (left padding): padded positions enter the conv as zeros.
            hidden_states = (hidden_states * attention_mask[:, :, None]).to(hidden_states.dtype)
        seq_len = hidden_states.shape[1]
        gate_in, gate_out, x = self.in_proj(hidden_states).transpose(1, 2).chunk(3, dim=1)  # each [batch, hidden, seq_len]
        gated = gate_in * x
        recorder = cache if hasattr(cache, "record_states") else None
        offsets = recorder.snapshot_offsets(self.layer_idx, seq_len) if recorder is not None else []
        decoding = cache is not None and cache.get_conv_state(self.layer_idx) is not None and seq_len == 1
        conv_out, checkpoints = cached_causal_conv(self, gated, cache, offsets, decoding, activation=None)
        if offsets:
            recorder.record_states(self.layer_idx, offsets, checkpoints, None)
        return self.out_proj((gate_out * conv_out).transpose(1, 2).contiguous())

    def _forward_packed(self, hidden_states: torch.Tensor, cache) -> torch.Tensor:
        """Continuous batching: hidden_states `[1, T, hidden_size]` packs the batch's sequences as the cache's
        plan says; each continues its slot's conv state, leaves its last inputs there and hands the cache its
        conv states at the plan's boundaries."""
        plan = cache.packed_plan()
        gate_in, gate_out, x = self.in_proj(hidden_states).transpose(1, 2).chunk(3, dim=1)  # each [1, hidden, T]
        conv_out, checkpoints = kernels.causal_conv1d_varlen(
            gate_in * x, self.conv.weight.squeeze(1), self.conv.bias, plan.cu_seqlens, cache.slots.conv[self.layer_idx],
            plan.slots, plan.has_initial_state, activation=None, checkpoint_offsets=plan.checkpoint_offsets,
        )
        cache.stage_checkpoints(self.layer_idx, checkpoints, None)
        return self.out_proj((gate_out * conv_out).transpose(1, 2).contiguous())
