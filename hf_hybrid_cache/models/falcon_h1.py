"""Falcon-H1's Mamba2 mixer on the one-pass core (`mamba2.py`): its muP multipliers on the input and the
projections, and its optional gated norm (`mamba_rms_norm`; else the scan's output is gated by SiLU alone)."""

import torch.nn.functional as F
from transformers.models.falcon_h1.modeling_falcon_h1 import FalconH1Mixer

from .mamba2 import PrefixMamba2Mixer


class PrefixFalconH1Mixer(PrefixMamba2Mixer, FalconH1Mixer):
    def project(self, hidden_states):
        return self.in_proj(hidden_states * self.ssm_in_multiplier) * self.mup_vector

    def gate(self, scan_output, gate):
        return self.norm(scan_output, gate) if self.mamba_rms_norm else scan_output * F.silu(gate)


PATCHED_MIXERS = {FalconH1Mixer: PrefixFalconH1Mixer}
