"""LFM2's and LFM2-MoE's short convs on the one-pass core (`short_conv.py`): the same layer in both."""

from transformers.models.lfm2.modeling_lfm2 import Lfm2ShortConv
from transformers.models.lfm2_moe.modeling_lfm2_moe import Lfm2MoeShortConv

from .short_conv import PrefixShortConv


class PrefixLfm2ShortConv(PrefixShortConv, Lfm2ShortConv):
    pass


class PrefixLfm2MoeShortConv(PrefixShortConv, Lfm2MoeShortConv):
    pass


PATCHED_MIXERS = {Lfm2ShortConv: PrefixLfm2ShortConv, Lfm2MoeShortConv: PrefixLfm2MoeShortConv}
