"""Qwen3-Next's GatedDeltaNet on the one-pass core: fused qkvz / ba projections, regrouped per key head."""

import torch
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextGatedDeltaNet

from .gated_delta_net import GatedDeltaNetInputs, PrefixGatedDeltaNet


class PrefixQwen3NextGatedDeltaNet(PrefixGatedDeltaNet, Qwen3NextGatedDeltaNet):
    def project(self, hidden_states: torch.Tensor) -> GatedDeltaNetInputs:
        query, key, value, z, b, a = self.fix_query_key_value_ordering(
            self.in_proj_qkvz(hidden_states), self.in_proj_ba(hidden_states)
        )
        batch_size, seq_len, _ = hidden_states.shape
        mixed_qkv = torch.cat([x.reshape(batch_size, seq_len, -1) for x in (query, key, value)], dim=-1)
        return GatedDeltaNetInputs(mixed_qkv.transpose(1, 2), gate=z, b=b, a=a)

    def gate_and_project_out(self, core_out: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len = core_out.shape[:2]
        core_out = self.norm(core_out.reshape(-1, self.head_v_dim), gate.reshape(-1, self.head_v_dim))
        return self.out_proj(core_out.reshape(batch_size, seq_len, -1))


PATCHED_MIXERS = {Qwen3NextGatedDeltaNet: PrefixQwen3NextGatedDeltaNet}
