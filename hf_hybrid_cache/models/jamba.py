"""Jamba's Mamba (v1) layer on one pass: its causal conv and selective scan on `hf_hybrid_cache.kernels`, handing a
`HybridPrefixCache` the conv and SSM states at the block boundaries inside a step, so that a prefill saves every
boundary it needs in one pass, and running in continuous batching (`_forward_packed`).

Where the forward stays transformers' own (autograd, packed training inputs), a fix remains: transformers'
`JambaMambaMixer` reads the cached SSM state only in one-token steps; a longer step runs `mamba_selective_scan`,
which takes no initial state and starts from zeros, so a prompt continued after a restored prefix would differ
from a cold run. The scan is linear in its initial state h0: started from h0, every state gains
`exp(A * cumsum(dt)) * h0` and every output `C . exp(A * cumsum(dt)) * h0`. That term is added around
transformers' own scan, before the output gate.
"""

import contextvars

import torch
import torch.nn.functional as F
from transformers.integrations.accelerate import force_accelerate_hooks
from transformers.models.jamba import modeling_jamba
from transformers.models.jamba.modeling_jamba import JambaMambaMixer

from .. import kernels
from .one_pass import OnePassMixer, cached_causal_conv, runs_on_transformers, scan_and_record, zero_padding

# The SSM state `[batch, intermediate_size, ssm_state_size]` the running step starts from; None: zeros.
_initial_state: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("jamba_initial_state", default=None)


def _scan_from_state(scan):
    """`scan` (transformers' `mamba_selective_scan`) started from `_initial_state` instead of zeros."""

    def scan_from_state(hidden_states, dt, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        return_last_state=False, **kwargs):
        initial_state = _initial_state.get()
        if initial_state is None:
            return scan(hidden_states, dt, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                        return_last_state=return_last_state, **kwargs)
        # Ungated, so that the term from the initial state joins the output before the gate.
        out, state = scan(hidden_states, dt, A, B, C, D=D, z=None, delta_bias=delta_bias,
                          delta_softplus=delta_softplus, return_last_state=True, **kwargs)
        dt = dt.float() + (delta_bias.float()[:, None] if delta_bias is not None else 0)
        dt = F.softplus(dt) if delta_softplus else dt
        # `[batch, channels, seq_len, state]`: how much of h0 is left after each token, as the scan decays it.
        decay = torch.exp(A.float()[None, :, None, :] * dt.cumsum(dim=-1)[..., None])
        carried = decay * initial_state.float()[:, :, None, :]
        out = out + torch.einsum("bdln,bnl->bdl", carried, C.float()).to(out.dtype)
        state = state + carried[:, :, -1].to(state.dtype)
        if z is not None:
            out = out * F.silu(z)
        return (out, state) if return_last_state else out

    scan_from_state.scan = scan
    return scan_from_state


class PrefixJambaMambaMixer(OnePassMixer, JambaMambaMixer):
    """transformers' Jamba Mamba layer on our conv and selective-scan kernels; uses its weights and attributes
    (`in_proj`, `conv1d`, `x_proj`, `dt_proj`, the dt / B / C norms, `A_log`, `D`, `out_proj`, `intermediate_size`,
    `ssm_state_size`, `time_step_rank`, `conv_kernel_size`, `activation`)."""

    @force_accelerate_hooks(["conv1d", "dt_proj"])
    def forward(self, hidden_states: torch.Tensor, cache=None, attention_mask=None, **kwargs) -> torch.Tensor:
        """hidden_states `[batch, seq_len, hidden_size]` -> `[batch, seq_len, hidden_size]`."""
        if hasattr(cache, "packed_plan"):  # continuous batching of a patched model (`continuous/paged_cache.py`)
            return self._forward_packed(hidden_states, cache)
        if runs_on_transformers(self, hidden_states, cache, kwargs):
            return self._forward_on_transformers(hidden_states, cache, attention_mask, **kwargs)
        batch_size, seq_len, _ = hidden_states.shape
        dtype = hidden_states.dtype
        mixed, gate = self.in_proj(zero_padding(hidden_states, attention_mask)).transpose(1, 2).chunk(2, dim=1)
        recurrent_state = cache.get_recurrent_state(self.layer_idx) if cache is not None else None
        decoding = recurrent_state is not None and cache.get_conv_state(self.layer_idx) is not None and seq_len == 1
        recorder = cache if hasattr(cache, "record_states") else None
        offsets = recorder.snapshot_offsets(self.layer_idx, seq_len) if recorder is not None else []
        conv_out, conv_checkpoints = cached_causal_conv(self, mixed, cache, offsets, decoding, self.activation)
        x = zero_padding(conv_out.transpose(1, 2), attention_mask)
        dt, B, C = self._selection(x)
        A = -torch.exp(self.A_log.float())
        if decoding:
            y = kernels.recurrent_selective_scan(x, dt, A, B, C, self.D, self.dt_proj.bias, state=recurrent_state)
        else:
            def scan(begin, end, state, checkpoint_offsets):
                return kernels.selective_scan(x[:, begin:end], dt[:, begin:end], A, B[:, begin:end], C[:, begin:end],
                                              self.D, self.dt_proj.bias, initial_state=state,
                                              checkpoint_offsets=checkpoint_offsets)

            if offsets:
                y, final_state = scan_and_record(recorder, self.layer_idx, scan, seq_len, recurrent_state, offsets,
                                                 conv_checkpoints)
            else:
                y, final_state, _ = scan(0, seq_len, recurrent_state, [])
            if cache is not None:
                cache.update_recurrent_state(final_state, self.layer_idx)
        return self.out_proj((y * F.silu(gate.transpose(1, 2).float())).to(dtype))

    def _selection(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The input-dependent dt (before `dt_proj.bias` and softplus, which the scan applies) `[batch, seq_len,
        intermediate_size]`, B and C `[batch, seq_len, ssm_state_size]`, normalised as Jamba normalises them."""
        time_step, B, C = self.x_proj(x).split([self.time_step_rank, self.ssm_state_size, self.ssm_state_size], dim=-1)
        dt = F.linear(self.dt_layernorm(time_step), self.dt_proj.weight)
        return dt, self.b_layernorm(B), self.c_layernorm(C)

    def _forward_packed(self, hidden_states: torch.Tensor, cache) -> torch.Tensor:
        """Continuous batching: hidden_states `[1, T, hidden_size]` packs the batch's sequences as the cache's
        plan says; each continues its slot's conv and SSM states, leaves its final ones there and hands the cache
        its states at the plan's boundaries."""
        plan = cache.packed_plan()
        mixed, gate = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)
        conv_out, conv_checkpoints = kernels.causal_conv1d_varlen(
            mixed.contiguous(), self.conv1d.weight.squeeze(1), self.conv1d.bias, plan.cu_seqlens,
            cache.slots.conv[self.layer_idx], plan.slots, plan.has_initial_state, activation=self.activation,
            checkpoint_offsets=plan.checkpoint_offsets,
        )
        x = conv_out.transpose(1, 2)
        dt, B, C = self._selection(x)
        y, checkpoints = kernels.selective_scan_varlen(
            x, dt, -torch.exp(self.A_log.float()), B, C, self.D, self.dt_proj.bias, plan.cu_seqlens,
            cache.slots.recurrent[self.layer_idx], plan.slots, plan.has_initial_state, plan.checkpoint_offsets,
        )
        cache.stage_checkpoints(self.layer_idx, conv_checkpoints, checkpoints)
        return self.out_proj((y * F.silu(gate.transpose(1, 2).float())).to(hidden_states.dtype))

    def _forward_on_transformers(self, hidden_states, cache, attention_mask, **kwargs) -> torch.Tensor:
        """transformers' forward, its multi-token scan continuing the cached SSM state."""
        state = cache.get_recurrent_state(self.layer_idx) if cache is not None else None
        if state is None or hidden_states.shape[1] == 1:
            return super().forward(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
        # A copy: the layer writes its new state into the cache's tensor in place.
        token = _initial_state.set(state.clone())
        try:
            return super().forward(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
        finally:
            _initial_state.reset(token)


# transformers' forward calls the module-level scan; with no initial state set it is unchanged, so unpatched
# Jamba models in the same process compute exactly what they did.
if not hasattr(modeling_jamba.mamba_selective_scan, "scan"):
    modeling_jamba.mamba_selective_scan = _scan_from_state(modeling_jamba.mamba_selective_scan)

PATCHED_MIXERS = {JambaMambaMixer: PrefixJambaMambaMixer}
