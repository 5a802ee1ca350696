"""Qwen3.5's GatedDeltaNet (dense and MoE, text and vision-language) on the one-pass core: separate qkv, z,
b and a projections; the output as in Qwen3-Next."""

import torch
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet
from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeGatedDeltaNet

from .gated_delta_net import GatedDeltaNetInputs, PrefixGatedDeltaNet
from .qwen3_next import PrefixQwen3NextGatedDeltaNet


class Qwen3_5Projections:
    """Qwen3.5's projections and output (shared with Qwen4-Exp, `qwen4_exp.py`)."""

    def project(self, hidden_states: torch.Tensor) -> GatedDeltaNetInputs:
        return GatedDeltaNetInputs(
            self.in_proj_qkv(hidden_states).transpose(1, 2),
            gate=self.in_proj_z(hidden_states),
            b=self.in_proj_b(hidden_states),
            a=self.in_proj_a(hidden_states),
        )

    gate_and_project_out = PrefixQwen3NextGatedDeltaNet.gate_and_project_out


class PrefixQwen3_5GatedDeltaNet(Qwen3_5Projections, PrefixGatedDeltaNet, Qwen3_5GatedDeltaNet):
    pass


class PrefixQwen3_5MoeGatedDeltaNet(Qwen3_5Projections, PrefixGatedDeltaNet, Qwen3_5MoeGatedDeltaNet):
    pass


PATCHED_MIXERS = {
    Qwen3_5GatedDeltaNet: PrefixQwen3_5GatedDeltaNet,
    Qwen3_5MoeGatedDeltaNet: PrefixQwen3_5MoeGatedDeltaNet,
}
