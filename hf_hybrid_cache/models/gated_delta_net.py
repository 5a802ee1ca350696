"""The one-pass Gated-DeltaNet forward shared by every gated-delta-rule family: short conv + gated delta
rule on `hf_hybrid_cache.kernels`, handing a `HybridPrefixCache` the states at block boundaries inside the
step, so that a prefill saves every boundary it needs in one pass.

A family adapter (`qwen3_next.py`, `qwen3_5.py`, `olmo_hybrid.py`) subclasses `PrefixGatedDeltaNet` together
with transformers' own GatedDeltaNet and says only what differs: how the input is projected, how beta is
made, and how the output is gated and projected back. KDA (Kimi-Linear, Bailing-Hybrid, GLM-5-Next: `kda.py`) is
the same layer with a decay per key channel: its adapter also says how the decay is made.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.integrations.accelerate import force_accelerate_hooks

from .. import kernels
from .one_pass import OnePassMixer, cached_causal_conv, runs_on_transformers, scan_and_record


@dataclass
class GatedDeltaNetInputs:
    """The projections of one step. mixed_qkv: `[batch, conv_dim, seq_len]` (q, k, v before the conv);
    gate: the output gate, `[batch * seq_len * num_v_heads, head_v_dim]` once reshaped; b, a:
    `[batch, seq_len, num_v_heads]` (beta and decay before their activations; `decay` makes g of a)."""

    mixed_qkv: torch.Tensor
    gate: torch.Tensor
    b: torch.Tensor
    a: torch.Tensor


class PrefixGatedDeltaNet(OnePassMixer):
    """Mixin placed before transformers' GatedDeltaNet class; uses its weights and attributes
    (`conv1d`, `A_log`, `dt_bias`, `key_dim`, `value_dim`, `head_k_dim`, `head_v_dim`, `layer_idx`, ...)."""

    def project(self, hidden_states: torch.Tensor) -> GatedDeltaNetInputs:
        raise NotImplementedError

    def beta(self, b: torch.Tensor) -> torch.Tensor:
        return b.sigmoid()

    def decay(self, a: torch.Tensor) -> torch.Tensor:
        """The log decay g (<= 0), fp32: `[batch, seq_len, num_v_heads]` per head, or `[..., head_k_dim]` per key
        channel."""
        # In fp32: in fp16, exp(A_log) may overflow to -inf.
        return -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)

    def gate_and_project_out(self, core_out: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """core_out `[batch, seq_len, num_v_heads, head_v_dim]` -> `[batch, seq_len, hidden_size]`."""
        raise NotImplementedError

    @force_accelerate_hooks("conv1d")
    def forward(self, hidden_states: torch.Tensor, cache=None, attention_mask=None, **kwargs) -> torch.Tensor:
        """hidden_states `[batch, seq_len, hidden_size]` -> `[batch, seq_len, hidden_size]`."""
        if hasattr(cache, "packed_plan"):  # continuous batching of a patched model (`continuous/paged_cache.py`)
            return self._forward_packed(hidden_states, cache)
        if runs_on_transformers(self, hidden_states, cache, kwargs):
            return super().forward(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
        if attention_mask is not None:
            # The 2D padding mask (left padding): padded positions enter the conv and the state as zeros.
            hidden_states = (hidden_states * attention_mask[:, :, None]).to(hidden_states.dtype)
        batch_size, seq_len, _ = hidden_states.shape
        conv_state = recurrent_state = None
        if cache is not None:
            conv_state = cache.get_conv_state(self.layer_idx)
            recurrent_state = cache.get_recurrent_state(self.layer_idx)
        recorder = cache if hasattr(cache, "record_states") else None
        offsets = recorder.snapshot_offsets(self.layer_idx, seq_len) if recorder is not None else []

        inputs = self.project(hidden_states)
        decoding = conv_state is not None and recurrent_state is not None and seq_len == 1
        conv_out, conv_checkpoints = cached_causal_conv(self, inputs.mixed_qkv, cache, offsets, decoding, self.activation)

        query, key, value = torch.split(conv_out.transpose(1, 2), [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        query = query.reshape(batch_size, seq_len, -1, self.head_k_dim)
        key = key.reshape(batch_size, seq_len, -1, self.head_k_dim)
        value = value.reshape(batch_size, seq_len, -1, self.head_v_dim)
        beta, g = self.beta(inputs.b), self.decay(inputs.a)

        if decoding:
            core_out = kernels.recurrent_gated_delta_rule(query, key, value, g, beta, state=recurrent_state)
        elif not offsets:
            core_out, final_state, _ = kernels.chunk_gated_delta_rule(query, key, value, g, beta, initial_state=recurrent_state)
        else:
            scanned = (query, key, value, g, beta)

            def scan(begin, end, state, checkpoint_offsets):
                return kernels.chunk_gated_delta_rule(*(x[:, begin:end] for x in scanned), initial_state=state,
                                                      checkpoint_offsets=checkpoint_offsets)

            core_out, final_state = scan_and_record(recorder, self.layer_idx, scan, seq_len, recurrent_state, offsets,
                                                    conv_checkpoints)
        if cache is not None and not decoding:
            cache.update_recurrent_state(final_state, self.layer_idx)
        return self.gate_and_project_out(core_out, inputs.gate)

    def _forward_packed(self, hidden_states: torch.Tensor, cache) -> torch.Tensor:
        """Continuous batching: hidden_states `[1, T, hidden_size]` packs the batch's sequences as the cache's
        plan says (lengths, state slots, boundaries to snapshot); each continues its slot's state, leaves its
        final state there and hands the cache its states at the plan's boundaries."""
        plan = cache.packed_plan()
        inputs = self.project(hidden_states)
        conv_out, conv_checkpoints = kernels.causal_conv1d_varlen(
            inputs.mixed_qkv, self.conv1d.weight.squeeze(1), self.conv1d.bias, plan.cu_seqlens,
            cache.slots.conv[self.layer_idx], plan.slots, plan.has_initial_state, activation=self.activation,
            checkpoint_offsets=plan.checkpoint_offsets,
        )
        seq_len = hidden_states.shape[1]
        query, key, value = torch.split(conv_out.transpose(1, 2), [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        query = query.reshape(1, seq_len, -1, self.head_k_dim)
        key = key.reshape(1, seq_len, -1, self.head_k_dim)
        value = value.reshape(1, seq_len, -1, self.head_v_dim)
        core_out, checkpoints = kernels.gated_delta_rule_varlen(
            query, key, value, self.decay(inputs.a), self.beta(inputs.b), plan.cu_seqlens, cache.slots.recurrent[self.layer_idx],
            plan.slots, plan.has_initial_state, checkpoint_offsets=plan.checkpoint_offsets,
        )
        cache.stage_checkpoints(self.layer_idx, conv_checkpoints, checkpoints)
        return self.gate_and_project_out(core_out, inputs.gate)
