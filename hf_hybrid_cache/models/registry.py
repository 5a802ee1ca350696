"""What a model needs of this package: the mixers with an adapter, and the adapter module of each
(gated-delta-rule and KDA mixers, Mamba2 and Mamba mixers and short convs, all on our one-pass kernels), and how a
request's prompt is keyed (`prompt_keying`).

Keyed by the name of transformers' mixer class, so that an adapter (and its transformers modeling module)
is imported only when a model holding that mixer shows up. An adapter module maps transformers' class to
ours in `PATCHED_MIXERS`. Every other layer runs transformers' own forward (the generic path).
"""

import importlib

import torch

from . import vision
from .keying import PromptKeying
from .one_pass import OnePassMixer
from .peft_state import adapter_state

# Inputs whose content the block keys cannot see (except images and videos of the models `vision.py` knows):
# such requests run uncached. Audio comes as features, waveforms (`input_values`) or tokens (`audio_input_ids`).
UNKEYED_INPUTS = ("pixel_values", "pixel_values_videos", "input_features", "input_values", "audio_input_ids",
                  "image_embeds", "inputs_embeds", "encoder_inputs_embeds", "mm_encoder_outputs", "per_layer_inputs")
# Families whose cache layers do not hold their whole state, with the reason (checked with transformers 5.24).
REFUSED_FAMILIES = {
    "recurrent_gemma": "its recurrent blocks keep their conv and RG-LRU states on the modules, not in the cache, "
    "and a multi-token step restarts the conv from zeros: a restored prefix could not be continued",
    "kyutai_speech_to_text": "it transcribes audio given on every request (codebook tokens beside the text), "
    "which the block keys cannot see, so nothing could ever be served; its cache is probed through "
    "embeddings it does not have",
    "voxtral_realtime": "it transcribes audio given on every request (input_features), which the block keys "
    "cannot see, so nothing could ever be served; its forward needs that audio even to probe the cache layout",
    "diffusion_gemma_text": "it generates by block diffusion (a decoder denoising a canvas over the encoded prompt), "
    "with a generate of its own that takes only the uncached tokens: not a causal continuation of a cache",
}


def refusal(config) -> str | None:
    """Why a model with this config cannot be served, or None."""
    text_config = config.get_text_config(decoder=True)
    for model_type in (config.model_type, text_config.model_type):
        if model_type in REFUSED_FAMILIES:
            return REFUSED_FAMILIES[model_type]
    if text_config.model_type == "dory" and getattr(text_config, "recurrent_kv_cache_mode", None) == "per_loop":
        return ("in recurrent_kv_cache_mode='per_loop' (its default) its first forward adds a cache layer per "
                "extra recurrent loop, which a cache restored before that forward does not have; load it with "
                "recurrent_kv_cache_mode='last_loop' (one cache per recurrent layer), which is served")
    return None


ADAPTER_MODULES = {
    "Qwen3NextGatedDeltaNet": "hf_hybrid_cache.models.qwen3_next",
    "Qwen3_5GatedDeltaNet": "hf_hybrid_cache.models.qwen3_5",
    "Qwen3_5MoeGatedDeltaNet": "hf_hybrid_cache.models.qwen3_5",
    "OlmoHybridGatedDeltaNet": "hf_hybrid_cache.models.olmo_hybrid",
    "Qwen4ExpTextGatedDeltaNet": "hf_hybrid_cache.models.qwen4_exp",
    "LaraMiniGatedDeltaNet": "hf_hybrid_cache.models.lara_mini",
    "JambaMambaMixer": "hf_hybrid_cache.models.jamba",
    "ZambaMambaMixer": "hf_hybrid_cache.models.zamba",
    "Lfm2ShortConv": "hf_hybrid_cache.models.lfm2",
    "Lfm2MoeShortConv": "hf_hybrid_cache.models.lfm2",
    "Lfm3ShortConv": "hf_hybrid_cache.models.lfm2",
    "NemotronHMamba2Mixer": "hf_hybrid_cache.models.nemotron_h",
    "BambaMixer": "hf_hybrid_cache.models.bamba",
    "GraniteMoeHybridMambaLayer": "hf_hybrid_cache.models.granitemoehybrid",
    "FalconH1Mixer": "hf_hybrid_cache.models.falcon_h1",
    "Zamba2MambaMixer": "hf_hybrid_cache.models.zamba2",
    "KimiLinearDeltaAttention": "hf_hybrid_cache.models.kimi_linear",
    "BailingHybridDeltaAttention": "hf_hybrid_cache.models.bailing_hybrid",
    "Glm5NextTextLinearAttention": "hf_hybrid_cache.models.glm5_next",
}


def patched_mixer_class(module: torch.nn.Module) -> type | None:
    """Our class for `module` (one of transformers' mixers), or None if it has none."""
    adapter = ADAPTER_MODULES.get(type(module).__name__)
    if adapter is None:
        return None
    # By class, not name alone: a remote-code class of the same name is left to the generic path.
    return importlib.import_module(adapter).PATCHED_MIXERS.get(type(module))


def is_one_pass_mixer(module: torch.nn.Module) -> bool:
    """Whether `module` takes its boundary states inside a forward (our GatedDeltaNets and KDA layers, Mamba2 and
    Mamba mixers, short convs)."""
    return isinstance(module, OnePassMixer)


def prompt_keying(model: torch.nn.Module, input_ids, kwargs: dict) -> PromptKeying | None:
    """The keying of one generate request's prompt (`keying.py`); None when the keys could not see all of its
    content or of the model's state (the request then runs uncached)."""
    model_state = adapter_state(model)
    if model_state is None:
        return None
    if vision.is_vision_model(model) and isinstance(input_ids, torch.Tensor) and input_ids.shape[0] == 1:
        return vision.media_keying(model, input_ids, kwargs, model_state)
    if any(kwargs.get(name) is not None for name in UNKEYED_INPUTS):
        return None
    return PromptKeying(model_state)
