"""GraniteMoeHybridMambaLayer on the one-pass Mamba2 core (`mamba2.py`): the same layer, nothing differs."""

from transformers.models.granitemoehybrid.modeling_granitemoehybrid import GraniteMoeHybridMambaLayer

from .mamba2 import PrefixMamba2Mixer


class PrefixGraniteMoeHybridMambaLayer(PrefixMamba2Mixer, GraniteMoeHybridMambaLayer):
    pass


PATCHED_MIXERS = {GraniteMoeHybridMambaLayer: PrefixGraniteMoeHybridMambaLayer}
