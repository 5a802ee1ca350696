"""Kimi-Linear's delta attention: the KDA core (`kda.py`) as it is."""

from transformers.models.kimi_linear.modeling_kimi_linear import KimiLinearDeltaAttention

from .kda import PrefixDeltaAttention


class PrefixKimiLinearDeltaAttention(PrefixDeltaAttention, KimiLinearDeltaAttention):
    pass


PATCHED_MIXERS = {KimiLinearDeltaAttention: PrefixKimiLinearDeltaAttention}
