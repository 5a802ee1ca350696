"""Qwen4-Exp's GatedDeltaNet on the one-pass core: its projections, gating and math are Qwen3.5's (separate
qkv, z, b and a projections; a gated RMSNorm whose activation is `output_gate_type`). Its indexed (QSA)
attention layers are paged like any other (`layout.py`). With PLE layers, a linear layer's cache also holds
a short conv state and the n-gram context, which other modules write: such a model takes the generic path
(`patching.py`), since the one-pass kernels hand over the GatedDeltaNet's own state only."""

from transformers.models.qwen4_exp.modeling_qwen4_exp import Qwen4ExpTextGatedDeltaNet

from .gated_delta_net import PrefixGatedDeltaNet
from .qwen3_5 import Qwen3_5Projections


class PrefixQwen4ExpTextGatedDeltaNet(Qwen3_5Projections, PrefixGatedDeltaNet, Qwen4ExpTextGatedDeltaNet):
    pass


PATCHED_MIXERS = {Qwen4ExpTextGatedDeltaNet: PrefixQwen4ExpTextGatedDeltaNet}
