"""The one-pass Gated-DeltaNet forward shared by every gated-delta-rule family: short conv + gated delta
rule on `hf_hybrid_cache.kernels`, handing a `HybridPrefixCache` the states at block boundaries inside the
step, so that a prefill saves every boundary it needs in one pass.

A family adapter (`qwen3_next.py`, `qwen3_5.py`, `olmo_hybrid.py`) subclasses `PrefixGatedDeltaNet` together
with transformers' own GatedDeltaNet and says only what differs: how the input is projected, how beta is
made, and how the output is gated and projected back.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.integrations.accelerate import force_accelerate_hooks

from .. import kernels, seams
from .one_pass import OnePassMixer, runs_on_transformers


@dataclass
class GatedDeltaNetInputs:
    """The projections of one step. mixed_qkv: `[batch, conv_dim, seq_len]` (q, k, v before the conv);
    gate: the output gate, `[batch * seq_len * num_v_heads, head_v_dim]` once reshaped; b, a:
    `[batch, seq_len, num_v_heads]` (beta and decay before their activations)."""

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
        conv_weight = self.conv1d.weight.squeeze(1)
        decoding = conv_state is not None and recurrent_state is not None and seq_len == 1
        if decoding:
            conv_out = kernels.causal_conv1d_update(
                inputs.mixed_qkv, conv_state, conv_weight, self.conv1d.bias, activation=self.activation
            )
            seams.count_unseen_tokens(cache, self.layer_idx, 1)
        else:
            conv_out, _, conv_checkpoints = kernels.causal_conv1d(
                inputs.mixed_qkv,
                conv_weight,
                self.conv1d.bias,
                conv_state=conv_state,
                activation=self.activation,
                checkpoint_offsets=offsets,
            )
            if cache is not None:
                # The cache keeps the last conv_kernel_size inputs; handing it only those avoids a copy of
                # the whole step in `update_conv_state`'s concatenation.
                handed = inputs.mixed_qkv[..., -self.conv_kernel_size :]
                cache.update_conv_state(handed, self.layer_idx, conv_kernel_size=self.conv_kernel_size)
                seams.count_unseen_tokens(cache, self.layer_idx, seq_len - handed.shape[-1])

        query, key, value = torch.split(conv_out.transpose(1, 2), [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        query = query.reshape(batch_size, seq_len, -1, self.head_k_dim)
        key = key.reshape(batch_size, seq_len, -1, self.head_k_dim)
        value = value.reshape(batch_size, seq_len, -1, self.head_v_dim)
        beta = self.beta(inputs.b)
        # In fp32: in fp16, exp(A_log) may overflow to -inf.
        g = -self.A_log.float().exp() * F.softplus(inputs.a.float() + self.dt_bias)

        if decoding:
            core_out = kernels.recurrent_gated_delta_rule(query, key, value, g, beta, state=recurrent_state)
        elif not offsets:
            core_out, final_state, _ = kernels.chunk_gated_delta_rule(query, key, value, g, beta, initial_state=recurrent_state)
        else:
            core_out, final_state = self._chunk_and_record(
                recorder, (query, key, value, g, beta), recurrent_state, offsets, conv_checkpoints
            )
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
        g = -self.A_log.float().exp() * F.softplus(inputs.a.float() + self.dt_bias)
        core_out, checkpoints = kernels.gated_delta_rule_varlen(
            query, key, value, g, self.beta(inputs.b), plan.cu_seqlens, cache.slots.recurrent[self.layer_idx],
            plan.slots, plan.has_initial_state, checkpoint_offsets=plan.checkpoint_offsets,
        )
        cache.stage_checkpoints(self.layer_idx, conv_checkpoints, checkpoints)
        return self.gate_and_project_out(core_out, inputs.gate)

    def _chunk_and_record(self, recorder, inputs, initial_state, offsets: list[int], conv_checkpoints: torch.Tensor):
        """The gated delta rule over the step, handing the recorder the states at `offsets`; in segments of at
        most `recorder.max_offsets_per_call` checkpoints each, so that the states computed but not yet in their
        slots never exceed one snapshot's worth however long the step.

        Args:
            inputs: q, k, v, g, beta of the whole step (`[batch, seq_len, ...]`, see `kernels.chunk_gated_delta_rule`).
            conv_checkpoints: `[len(offsets), batch, conv_dim, conv_width]`.

        Returns:
            the output `[batch, seq_len, num_v_heads, head_v_dim]` and the final state.
        """
        seq_len = inputs[0].shape[1]
        limit = recorder.max_offsets_per_call
        outputs, state, begin = [], initial_state, 0
        for first in range(0, len(offsets), limit):
            group = offsets[first : first + limit]
            end = group[-1] if first + limit < len(offsets) else seq_len
            out, state, checkpoints = kernels.chunk_gated_delta_rule(
                *(x[:, begin:end] for x in inputs), initial_state=state, checkpoint_offsets=[o - begin for o in group]
            )
            recorder.record_states(self.layer_idx, group, conv_checkpoints[first : first + limit], checkpoints)
            outputs.append(out)
            begin = end
        return (outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)), state
