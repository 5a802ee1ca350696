"""LARA-mini's GatedDeltaNet: Qwen3.5's (its projections and output, `qwen3_5.py`) beside sliding-window and full
attention."""

from transformers.models.lara_mini.modeling_lara_mini import LaraMiniGatedDeltaNet

from .gated_delta_net import PrefixGatedDeltaNet
from .qwen3_5 import Qwen3_5Projections


class PrefixLaraMiniGatedDeltaNet(Qwen3_5Projections, PrefixGatedDeltaNet, LaraMiniGatedDeltaNet):
    pass


PATCHED_MIXERS = {LaraMiniGatedDeltaNet: PrefixLaraMiniGatedDeltaNet}
