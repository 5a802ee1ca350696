"""Kimi-Linear's delta attention (KDA) on the one-pass core: the gated delta rule with a decay per key channel,
q / k / v projected apart, the decay from a low-rank forget gate, and a low-rank output gate."""

import torch
from transformers.models.kimi_linear.modeling_kimi_linear import KimiLinearDeltaAttention

from .gated_delta_net import GatedDeltaNetInputs, PrefixGatedDeltaNet


class PrefixKimiLinearDeltaAttention(PrefixGatedDeltaNet, KimiLinearDeltaAttention):
    # The core's names for the sizes; KDA's q, k and v heads are alike (num_heads of head_dim).
    key_dim = value_dim = property(lambda self: self.qkv_dim)
    head_k_dim = head_v_dim = property(lambda self: self.head_dim)
    num_v_heads = property(lambda self: self.num_heads)

    def project(self, hidden_states: torch.Tensor) -> GatedDeltaNetInputs:
        mixed_qkv = torch.cat([self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)], dim=-1)
        return GatedDeltaNetInputs(
            mixed_qkv.transpose(1, 2), gate=self.g_b_proj(self.g_a_proj(hidden_states)), b=self.b_proj(hidden_states),
            a=self.forget_gate(hidden_states),  # already the log decay, `[batch, seq_len, num_heads, head_dim]` fp32
        )

    def decay(self, a: torch.Tensor) -> torch.Tensor:
        return a

    def gate_and_project_out(self, core_out: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len = core_out.shape[:2]
        core_out = self.o_norm(core_out, gate.view(batch_size, seq_len, -1, self.head_dim))
        return self.o_proj(core_out.reshape(batch_size, seq_len, -1))


PATCHED_MIXERS = {KimiLinearDeltaAttention: PrefixKimiLinearDeltaAttention}
