"""The short convs of LFM2, LFM2-MoE and LFM3 on the one-pass core (`short_conv.py`): the same layer in each."""

from transformers.models.lfm2.modeling_lfm2 import Lfm2ShortConv
from transformers.models.lfm2_moe.modeling_lfm2_moe import Lfm2MoeShortConv
from transformers.models.lfm3.modeling_lfm3 import Lfm3ShortConv

from .short_conv import PrefixShortConv


class PrefixLfm2ShortConv(PrefixShortConv, Lfm2ShortConv):
    pass


class PrefixLfm2MoeShortConv(PrefixShortConv, Lfm2MoeShortConv):
    pass


class PrefixLfm3ShortConv(PrefixShortConv, Lfm3ShortConv):
    pass


PATCHED_MIXERS = {
    Lfm2ShortConv: PrefixLfm2ShortConv, Lfm2MoeShortConv: PrefixLfm2MoeShortConv, Lfm3ShortConv: PrefixLfm3ShortConv,
}
