"""Bailing-Hybrid's delta attention on the KDA core (`kda.py`): a full-rank output gate."""

from transformers.models.bailing_hybrid.modeling_bailing_hybrid import BailingHybridDeltaAttention

from .kda import PrefixDeltaAttention


class PrefixBailingHybridDeltaAttention(PrefixDeltaAttention, BailingHybridDeltaAttention):
    def output_gate(self, hidden_states):
        return self.g_proj(hidden_states)


PATCHED_MIXERS = {BailingHybridDeltaAttention: PrefixBailingHybridDeltaAttention}
