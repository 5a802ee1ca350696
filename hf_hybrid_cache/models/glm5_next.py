"""GLM-5-Next's linear attention (Kimi-style KDA): the KDA core (`kda.py`) as it is."""

from transformers.models.glm5_next.modeling_glm5_next import Glm5NextTextLinearAttention

from .kda import PrefixDeltaAttention


class PrefixGlm5NextTextLinearAttention(PrefixDeltaAttention, Glm5NextTextLinearAttention):
    pass


PATCHED_MIXERS = {Glm5NextTextLinearAttention: PrefixGlm5NextTextLinearAttention}
