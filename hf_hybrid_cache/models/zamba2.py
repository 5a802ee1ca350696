"""Zamba2MambaMixer on the one-pass Mamba2 core (`mamba2.py`): the same layer, nothing differs."""

from transformers.models.zamba2.modeling_zamba2 import Zamba2MambaMixer

from .mamba2 import PrefixMamba2Mixer


class PrefixZamba2MambaMixer(PrefixMamba2Mixer, Zamba2MambaMixer):
    pass


PATCHED_MIXERS = {Zamba2MambaMixer: PrefixZamba2MambaMixer}
