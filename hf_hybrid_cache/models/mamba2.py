"""The one-pass Mamba2 mixer shared by every Mamba2 family (Nemotron-H, Granite 4.0-H, Bamba, Falcon-H1, Zamba2):
its causal conv and SSD scan on `hf_hybrid_cache.kernels`, handing a `HybridPrefixCache` the conv and SSM states at
the block boundaries inside a step, so that a prefill saves every boundary it needs in one pass.

A family adapter (`nemotron_h.py`, `bamba.py`, `granitemoehybrid.py`, `falcon_h1.py`, `zamba2.py`) subclasses `PrefixMamba2Mixer` together with transformers' own mixer, whose
weights and attributes it uses (`in_proj`, `conv1d`, `A_log`, `D`, `dt_bias`, `norm`, `out_proj`, `num_heads`,
`head_dim`, `n_groups`, `ssm_state_size`, `intermediate_size`, `conv_dim`, `time_step_limit`, `activation`), and
says only what differs: how the input is projected and how the scan's output is gated.
"""

import torch
from transformers.integrations.accelerate import force_accelerate_hooks

from .. import kernels
from ..kernels.dispatch import NO_DT_LIMIT
from .one_pass import OnePassMixer, cached_causal_conv, runs_on_transformers, scan_and_record, zero_padding


class PrefixMamba2Mixer(OnePassMixer):
    """Mixin placed before transformers' Mamba2 mixer class."""

    def project(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states `[batch, seq_len, hidden_size]` -> the gate, conv input and dt, side by side."""
        return self.in_proj(hidden_states)

    def gate(self, scan_output: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """The gated RMS norm of transformers' mixer, `[batch, seq_len, intermediate_size]` each."""
        return self.norm(scan_output, gate)

    @force_accelerate_hooks("conv1d")
    def forward(self, hidden_states: torch.Tensor, cache=None, attention_mask=None, **kwargs) -> torch.Tensor:
        """hidden_states `[batch, seq_len, hidden_size]` -> `[batch, seq_len, hidden_size]`."""
        if hasattr(cache, "packed_plan"):  # continuous batching of a patched model (`continuous/paged_cache.py`)
            return self._forward_packed(hidden_states, cache)
        if runs_on_transformers(self, hidden_states, cache, kwargs):
            return super().forward(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
        batch_size, seq_len, _ = hidden_states.shape
        dtype = hidden_states.dtype
        hidden_states = zero_padding(hidden_states, attention_mask)
        gate, mixed, dt = self.project(hidden_states).split([self.intermediate_size, self.conv_dim, self.num_heads], dim=-1)
        recurrent_state = cache.get_recurrent_state(self.layer_idx) if cache is not None else None
        decoding = recurrent_state is not None and cache.get_conv_state(self.layer_idx) is not None and seq_len == 1
        recorder = cache if hasattr(cache, "record_states") else None
        offsets = recorder.snapshot_offsets(self.layer_idx, seq_len) if recorder is not None else []
        conv_out, conv_checkpoints = cached_causal_conv(self, mixed.transpose(1, 2), cache, offsets, decoding,
                                                        self.activation)
        x, B, C = self._split(zero_padding(conv_out.transpose(1, 2), attention_mask), batch_size, seq_len)
        A = -torch.exp(self.A_log.float())
        limit = self.time_step_limit or NO_DT_LIMIT
        if decoding:
            # transformers' (and mamba_ssm's) decode step does not clamp the step size to time_step_limit, its
            # chunked scan does: a generated token goes unclamped as there; a one-token rest of the prompt after a
            # hit is clamped, as the cold prefill that computed it in one chunk did.
            prompt = recorder is not None and recorder.in_prompt_step()
            y = kernels.recurrent_ssd(x, dt, A, B, C, self.D, self.dt_bias, limit if prompt else NO_DT_LIMIT,
                                      state=recurrent_state)
        else:
            def scan(begin, end, state, checkpoint_offsets):
                return kernels.chunk_ssd(x[:, begin:end], dt[:, begin:end], A, B[:, begin:end], C[:, begin:end],
                                         self.D, self.dt_bias, limit, initial_state=state,
                                         checkpoint_offsets=checkpoint_offsets)

            if offsets:
                y, final_state = scan_and_record(recorder, self.layer_idx, scan, seq_len, recurrent_state, offsets,
                                                 conv_checkpoints)
            else:
                y, final_state, _ = scan(0, seq_len, recurrent_state, [])
            if cache is not None:
                cache.update_recurrent_state(final_state, self.layer_idx)
        y = self.gate(y.reshape(batch_size, seq_len, self.intermediate_size), gate)
        return self.out_proj(y.to(dtype))

    def _split(self, conv_out: torch.Tensor, batch_size: int, seq_len: int):
        """conv_out `[batch, seq_len, conv_dim]` -> x `[batch, seq_len, H, P]`, B and C `[batch, seq_len, G, N]`."""
        groups = self.n_groups * self.ssm_state_size
        x, B, C = conv_out.split([self.intermediate_size, groups, groups], dim=-1)
        return (x.reshape(batch_size, seq_len, self.num_heads, self.head_dim),
                B.reshape(batch_size, seq_len, self.n_groups, self.ssm_state_size),
                C.reshape(batch_size, seq_len, self.n_groups, self.ssm_state_size))

    def _forward_packed(self, hidden_states: torch.Tensor, cache) -> torch.Tensor:
        """Continuous batching: hidden_states `[1, T, hidden_size]` packs the batch's sequences as the cache's
        plan says; each continues its slot's conv and SSM states, leaves its final ones there and hands the cache
        its states at the plan's boundaries."""
        plan = cache.packed_plan()
        seq_len = hidden_states.shape[1]
        dtype = hidden_states.dtype
        gate, mixed, dt = self.project(hidden_states).split([self.intermediate_size, self.conv_dim, self.num_heads], dim=-1)
        conv_out, conv_checkpoints = kernels.causal_conv1d_varlen(
            mixed.transpose(1, 2), self.conv1d.weight.squeeze(1), self.conv1d.bias, plan.cu_seqlens,
            cache.slots.conv[self.layer_idx], plan.slots, plan.has_initial_state, activation=self.activation,
            checkpoint_offsets=plan.checkpoint_offsets,
        )
        x, B, C = self._split(conv_out.transpose(1, 2), 1, seq_len)
        # Decode steps unclamped, prompt tokens clamped: as a request alone runs through transformers' mixer.
        y, checkpoints = kernels.ssd_varlen(
            x, dt, -torch.exp(self.A_log.float()), B, C, self.D, self.dt_bias, self.time_step_limit or NO_DT_LIMIT,
            plan.cu_seqlens, cache.slots.recurrent[self.layer_idx], plan.slots, plan.has_initial_state,
            plan.checkpoint_offsets, unclamped=plan.decoding,
        )
        cache.stage_checkpoints(self.layer_idx, conv_checkpoints, checkpoints)
        return self.out_proj(self.gate(y.reshape(1, seq_len, self.intermediate_size), gate).to(dtype))
