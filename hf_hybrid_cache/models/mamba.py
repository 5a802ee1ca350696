"""The one-pass Mamba (v1) mixer shared by Jamba and Zamba: its causal conv and selective scan on
`hf_hybrid_cache.kernels`, handing a `HybridPrefixCache` the conv and SSM states at the block boundaries inside a
step, so that a prefill saves every boundary it needs in one pass, and its packed forward in continuous batching.

A family adapter (`jamba.py`, `zamba.py`) subclasses `PrefixMambaMixer` together with transformers' own mixer, whose
weights it uses, and says what differs: how the input is split into the conv's input and the gate, how dt, B and C
are selected from the conv's output, the scan's per-channel parameters, and the shape its cache keeps the SSM state
in (Zamba: per head).
"""

import torch
import torch.nn.functional as F
from transformers.integrations.accelerate import force_accelerate_hooks

from .. import kernels
from .one_pass import OnePassMixer, cached_causal_conv, runs_on_transformers, scan_and_record, zero_padding


class PrefixMambaMixer(OnePassMixer):
    """Mixin placed before transformers' Mamba mixer class; uses its `in_proj`, `conv1d`, `out_proj`,
    `intermediate_size`, `ssm_state_size`, `conv_kernel_size`, `activation` and `layer_idx`."""

    def split_input(self, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """in_proj's output `[batch, seq_len, 2 * intermediate_size]` -> the conv's input `[batch, intermediate_size,
        seq_len]` (contiguous) and the gate `[batch, seq_len, intermediate_size]`."""
        raise NotImplementedError

    def selection(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The conv's output x `[batch, seq_len, intermediate_size]` -> dt (before the bias and softplus the scan
        applies) `[batch, seq_len, intermediate_size]`, and B, C `[batch, seq_len, N]` or `[..., groups, N]`."""
        raise NotImplementedError

    def scan_parameters(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A `[intermediate_size, N]` (negative, fp32), D and dt_bias `[intermediate_size]`."""
        raise NotImplementedError

    @force_accelerate_hooks("conv1d")
    def forward(self, hidden_states: torch.Tensor, cache=None, attention_mask=None, **kwargs) -> torch.Tensor:
        """hidden_states `[batch, seq_len, hidden_size]` -> `[batch, seq_len, hidden_size]`."""
        if hasattr(cache, "packed_plan"):  # continuous batching of a patched model (`continuous/paged_cache.py`)
            return self._forward_packed(hidden_states, cache)
        if runs_on_transformers(self, hidden_states, cache, kwargs):
            return self.forward_on_transformers(hidden_states, cache, attention_mask, **kwargs)
        batch_size, seq_len, _ = hidden_states.shape
        # transformers' Mamba mixers zero the padding before the input projection and again after the conv.
        mixed, gate = self.split_input(self.in_proj(zero_padding(hidden_states, attention_mask)))
        cached_state = cache.get_recurrent_state(self.layer_idx) if cache is not None else None
        decoding = cached_state is not None and cache.get_conv_state(self.layer_idx) is not None and seq_len == 1
        recorder = cache if hasattr(cache, "record_states") else None
        offsets = recorder.snapshot_offsets(self.layer_idx, seq_len) if recorder is not None else []
        conv_out, conv_checkpoints = cached_causal_conv(self, mixed, cache, offsets, decoding, self.activation)
        x = zero_padding(conv_out.transpose(1, 2), attention_mask)
        dt, B, C = self.selection(x)
        A, D, dt_bias = self.scan_parameters()
        # The scan's state `[batch, intermediate_size, N]`, a view of the cache's.
        state = None if cached_state is None else cached_state.view(batch_size, self.intermediate_size, -1)
        if decoding:
            y = kernels.recurrent_selective_scan(x, dt, A, B, C, D, dt_bias, state=state)
        else:
            def scan(begin, end, initial_state, checkpoint_offsets):
                y, final, checkpoints = kernels.selective_scan(
                    x[:, begin:end], dt[:, begin:end], A, B[:, begin:end], C[:, begin:end], D, dt_bias,
                    initial_state=initial_state, checkpoint_offsets=checkpoint_offsets,
                )
                return y, final, checkpoints.view(len(checkpoint_offsets), *cached_shape)

            cached_shape = self.state_shape(batch_size)
            if offsets:
                y, final_state = scan_and_record(recorder, self.layer_idx, scan, seq_len, state, offsets, conv_checkpoints)
            else:
                y, final_state, _ = scan(0, seq_len, state, [])
            if cache is not None:
                cache.update_recurrent_state(final_state.view(cached_shape), self.layer_idx)
        return self.out_proj((y * F.silu(gate.float())).to(hidden_states.dtype))

    def state_shape(self, batch_size: int) -> tuple[int, ...]:
        """The SSM state's shape as the cache keeps it: `[batch, intermediate_size, N]` unless a family says."""
        return (batch_size, self.intermediate_size, self.ssm_state_size)

    def forward_on_transformers(self, hidden_states, cache, attention_mask, **kwargs) -> torch.Tensor:
        """What runs where our kernels do not (autograd, packed training inputs): transformers' forward."""
        return super().forward(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)

    def _forward_packed(self, hidden_states: torch.Tensor, cache) -> torch.Tensor:
        """Continuous batching: hidden_states `[1, T, hidden_size]` packs the batch's sequences as the cache's
        plan says; each continues its slot's conv and SSM states, leaves its final ones there and hands the cache
        its states at the plan's boundaries."""
        plan = cache.packed_plan()
        mixed, gate = self.split_input(self.in_proj(hidden_states))
        conv_out, conv_checkpoints = kernels.causal_conv1d_varlen(
            mixed, self.conv1d.weight.squeeze(1), self.conv1d.bias, plan.cu_seqlens, cache.slots.conv[self.layer_idx],
            plan.slots, plan.has_initial_state, activation=self.activation, checkpoint_offsets=plan.checkpoint_offsets,
        )
        x = conv_out.transpose(1, 2)
        dt, B, C = self.selection(x)
        A, D, dt_bias = self.scan_parameters()
        pool = cache.slots.recurrent[self.layer_idx]
        y, checkpoints = kernels.selective_scan_varlen(
            x, dt, A, B, C, D, dt_bias, plan.cu_seqlens, pool.view(pool.shape[0], self.intermediate_size, -1),
            plan.slots, plan.has_initial_state, plan.checkpoint_offsets,
        )
        cache.stage_checkpoints(self.layer_idx, conv_checkpoints, checkpoints.view(-1, *pool.shape[1:]))
        return self.out_proj((y * F.silu(gate.float())).to(hidden_states.dtype))
