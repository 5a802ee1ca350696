"""NemotronHMamba2Mixer on the one-pass Mamba2 core (`mamba2.py`): the same layer, nothing differs."""

from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHMamba2Mixer

from .mamba2 import PrefixMamba2Mixer


class PrefixNemotronHMamba2Mixer(PrefixMamba2Mixer, NemotronHMamba2Mixer):
    pass


PATCHED_MIXERS = {NemotronHMamba2Mixer: PrefixNemotronHMamba2Mixer}
