"""Qwen3-Next adapter: the cache layout of its layers, and a GatedDeltaNet that runs on our kernels and
snapshots its state where a `HybridPrefixCache` asks.

The patched forward computes what transformers' `Qwen3NextGatedDeltaNet.forward` computes, with any cache
(or none); only the math goes through `hf_hybrid_cache.kernels` and the boundary states are handed over.
"""

import types

import torch
import torch.nn.functional as F
from transformers.integrations.accelerate import force_accelerate_hooks
from transformers.models.qwen3_next import modeling_qwen3_next as modeling

from . import kernels
from .layout import AttentionLayerSpec, LinearLayerSpec, ModelLayout


def layout(model: modeling.Qwen3NextForCausalLM) -> ModelLayout:
    """The per-layer cache shapes of `model`, each layer on the device of its own weights."""
    config = model.config
    attention, linear = [], []
    for layer_idx, layer in enumerate(model.model.layers):
        if config.layer_types[layer_idx] == "full_attention":
            weight = layer.self_attn.k_proj.weight
            attention.append(
                AttentionLayerSpec(layer_idx, config.num_key_value_heads, layer.self_attn.head_dim, weight.dtype, weight.device)
            )
        else:
            gdn = layer.linear_attn
            weight = gdn.in_proj_qkvz.weight
            linear.append(
                LinearLayerSpec(
                    layer_idx,
                    conv_dim=gdn.conv_dim,
                    conv_width=gdn.conv_kernel_size,
                    num_heads=gdn.num_v_heads,
                    head_k_dim=gdn.head_k_dim,
                    head_v_dim=gdn.head_v_dim,
                    dtype=weight.dtype,
                    device=weight.device,
                )
            )
    return ModelLayout(config.model_type, len(model.model.layers), tuple(attention), tuple(linear))


class PrefixGatedDeltaNet(modeling.Qwen3NextGatedDeltaNet):
    """Qwen3-Next's GatedDeltaNet on `hf_hybrid_cache.kernels`, recording boundary snapshots."""

    @force_accelerate_hooks("conv1d")
    def forward(self, hidden_states: torch.Tensor, cache=None, attention_mask=None, **kwargs) -> torch.Tensor:
        """hidden_states `[batch, seq_len, hidden_size]` -> `[batch, seq_len, hidden_size]`."""
        if kwargs.get("cu_seq_lens_q") is not None or (cache is not None and cache.is_recording_past(self.layer_idx)):
            # Packed sequences and crop-able caches stay on transformers' own path.
            return super().forward(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
        hidden_states = modeling.apply_mask_to_padding_states(hidden_states, attention_mask)
        batch_size, seq_len, _ = hidden_states.shape
        conv_state = recurrent_state = None
        if cache is not None:
            conv_state = cache.get_conv_state(self.layer_idx)
            recurrent_state = cache.get_recurrent_state(self.layer_idx)
        recorder = cache if hasattr(cache, "record_step") else None
        offsets = recorder.snapshot_offsets(self.layer_idx, seq_len) if recorder is not None else []

        query, key, value, z, b, a = self.fix_query_key_value_ordering(
            self.in_proj_qkvz(hidden_states), self.in_proj_ba(hidden_states)
        )
        mixed_qkv = torch.cat([x.reshape(batch_size, seq_len, -1) for x in (query, key, value)], dim=-1)
        mixed_qkv = mixed_qkv.transpose(1, 2)  # [batch, conv_dim, seq_len]
        conv_weight = self.conv1d.weight.squeeze(1)
        decoding = conv_state is not None and recurrent_state is not None and seq_len == 1
        if decoding:
            conv_out = kernels.causal_conv1d_update(
                mixed_qkv, conv_state, conv_weight, self.conv1d.bias, activation=self.activation
            )
            conv_checkpoints = conv_state.unsqueeze(0).clone() if offsets else None
        else:
            conv_out, _, conv_checkpoints = kernels.causal_conv1d(
                mixed_qkv,
                conv_weight,
                self.conv1d.bias,
                conv_state=conv_state,
                activation=self.activation,
                checkpoint_offsets=offsets,
            )
            if cache is not None:
                # The cache keeps the last conv_kernel_size inputs; handing it only those avoids a copy of
                # the whole step in `update_conv_state`'s concatenation.
                cache.update_conv_state(
                    mixed_qkv[..., -self.conv_kernel_size :], self.layer_idx, conv_kernel_size=self.conv_kernel_size
                )

        query, key, value = torch.split(conv_out.transpose(1, 2), [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        query = query.reshape(batch_size, seq_len, -1, self.head_k_dim)
        key = key.reshape(batch_size, seq_len, -1, self.head_k_dim)
        value = value.reshape(batch_size, seq_len, -1, self.head_v_dim)
        beta = b.sigmoid()
        # In fp32: in fp16, exp(A_log) may overflow to -inf.
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)

        if decoding:
            core_out = kernels.recurrent_gated_delta_rule(query, key, value, g, beta, state=recurrent_state)
            recurrent_checkpoints = recurrent_state.unsqueeze(0).clone() if offsets else None
        else:
            core_out, final_state, recurrent_checkpoints = kernels.chunk_gated_delta_rule(
                query, key, value, g, beta, initial_state=recurrent_state, checkpoint_offsets=offsets
            )
            if cache is not None:
                cache.update_recurrent_state(final_state, self.layer_idx)
        if recorder is not None:
            recorder.record_step(self.layer_idx, seq_len, offsets, conv_checkpoints, recurrent_checkpoints)

        core_out = self.norm(core_out.reshape(-1, self.head_v_dim), z.reshape(-1, self.head_v_dim))
        return self.out_proj(core_out.reshape(batch_size, seq_len, -1))


def patch_layers(model: modeling.Qwen3NextForCausalLM) -> None:
    """Turn every GatedDeltaNet of `model` into a `PrefixGatedDeltaNet` (same weights, same module)."""
    for layer in model.model.layers:
        gdn = getattr(layer, "linear_attn", None)
        if gdn is None or isinstance(gdn, PrefixGatedDeltaNet):
            continue
        gdn.__class__ = PrefixGatedDeltaNet
        if hasattr(gdn, "_old_forward"):
            # accelerate's hooks (device_map) call the forward they wrapped, bound before the patch.
            gdn._old_forward = types.MethodType(PrefixGatedDeltaNet.forward, gdn)
