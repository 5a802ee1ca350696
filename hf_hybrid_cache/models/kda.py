"""KDA ("Kimi delta attention": Kimi-Linear's and Bailing's linear layers) on the one-pass GatedDeltaNet core: the
gated delta rule with a decay per key channel, q / k / v projected apart, the decay from the layer's forget gate,
and a gated RMSNorm before the output projection. A family binds it to transformers' class (Kimi-Linear, GLM-5-Next),
with the projection of its output gate where that differs (Bailing)."""

import torch

from .gated_delta_net import GatedDeltaNetInputs, PrefixGatedDeltaNet


class PrefixDeltaAttention(PrefixGatedDeltaNet):
    """Mixin placed before transformers' KDA class; uses its `q_proj`, `k_proj`, `v_proj`, `b_proj`, `forget_gate`,
    `o_norm`, `o_proj`, `num_heads`, `head_dim`, `qkv_dim` (and `g_a_proj`, `g_b_proj` unless `output_gate` is
    overridden)."""

    # The core's names for the sizes; KDA's q, k and v heads are alike (num_heads of head_dim).
    key_dim = value_dim = property(lambda self: self.qkv_dim)
    head_k_dim = head_v_dim = property(lambda self: self.head_dim)
    num_v_heads = property(lambda self: self.num_heads)

    def output_gate(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The gate of the output norm, `[batch, seq_len, qkv_dim]`: low-rank, `g_b_proj(g_a_proj(x))`."""
        return self.g_b_proj(self.g_a_proj(hidden_states))

    def project(self, hidden_states: torch.Tensor) -> GatedDeltaNetInputs:
        mixed_qkv = torch.cat([self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)], dim=-1)
        return GatedDeltaNetInputs(
            mixed_qkv.transpose(1, 2), gate=self.output_gate(hidden_states), b=self.b_proj(hidden_states),
            a=self.forget_gate(hidden_states),  # already the log decay, `[batch, seq_len, num_heads, head_dim]`
        )

    def decay(self, a: torch.Tensor) -> torch.Tensor:
        return a

    def gate_and_project_out(self, core_out: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len = core_out.shape[:2]
        core_out = self.o_norm(core_out, gate.view(batch_size, seq_len, -1, self.head_dim))
        return self.o_proj(core_out.reshape(batch_size, seq_len, -1))
