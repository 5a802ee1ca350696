"""OLMo-Hybrid's GatedDeltaNet on the one-pass core: separate q/k/v/a/b projections, a dedicated output
gate (g_proj), and beta scaled to [0, 2] when `allow_neg_eigval`."""

import torch
from transformers.models.olmo_hybrid.modeling_olmo_hybrid import OlmoHybridGatedDeltaNet

from .gated_delta_net import GatedDeltaNetInputs, PrefixGatedDeltaNet


class PrefixOlmoHybridGatedDeltaNet(PrefixGatedDeltaNet, OlmoHybridGatedDeltaNet):
    def project(self, hidden_states: torch.Tensor) -> GatedDeltaNetInputs:
        mixed_qkv = torch.cat([self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)], dim=-1)
        return GatedDeltaNetInputs(
            mixed_qkv.transpose(1, 2), gate=self.g_proj(hidden_states), b=self.b_proj(hidden_states), a=self.a_proj(hidden_states)
        )

    def beta(self, b: torch.Tensor) -> torch.Tensor:
        # Negative eigenvalues of the state transition: beta in [0, 2] instead of [0, 1].
        return b.sigmoid() * 2.0 if self.allow_neg_eigval else b.sigmoid()

    def gate_and_project_out(self, core_out: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len = core_out.shape[:2]
        core_out = self.o_norm(core_out.reshape(-1, self.head_v_dim), gate.reshape(-1, self.head_v_dim))
        return self.o_proj(core_out.reshape(batch_size, seq_len, -1))


PATCHED_MIXERS = {OlmoHybridGatedDeltaNet: PrefixOlmoHybridGatedDeltaNet}
