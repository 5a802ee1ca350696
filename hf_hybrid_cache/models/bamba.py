"""BambaMixer on the one-pass Mamba2 core (`mamba2.py`): the same layer, nothing differs."""

from transformers.models.bamba.modeling_bamba import BambaMixer

from .mamba2 import PrefixMamba2Mixer


class PrefixBambaMixer(PrefixMamba2Mixer, BambaMixer):
    pass


PATCHED_MIXERS = {BambaMixer: PrefixBambaMixer}
