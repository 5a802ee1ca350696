"""The mixers with an adapter, and the adapter module of each: gated-delta-rule mixers on our one-pass
kernels, and Jamba's Mamba layer, which needs a fix to continue from a restored state.

Keyed by the name of transformers' mixer class, so that an adapter (and its transformers modeling module)
is imported only when a model holding that mixer shows up. An adapter module maps transformers' class to
ours in `PATCHED_MIXERS`. Every other layer runs transformers' own forward (the generic path).
"""

import importlib

import torch

ADAPTER_MODULES = {
    "Qwen3NextGatedDeltaNet": "hf_hybrid_cache.qwen3_next",
    "Qwen3_5GatedDeltaNet": "hf_hybrid_cache.qwen3_5",
    "Qwen3_5MoeGatedDeltaNet": "hf_hybrid_cache.qwen3_5",
    "OlmoHybridGatedDeltaNet": "hf_hybrid_cache.olmo_hybrid",
    "JambaMambaMixer": "hf_hybrid_cache.jamba",
}


def patched_mixer_class(module: torch.nn.Module) -> type | None:
    """Our class for `module` (one of transformers' mixers), or None if it has none."""
    adapter = ADAPTER_MODULES.get(type(module).__name__)
    if adapter is None:
        return None
    # By class, not name alone: a remote-code class of the same name is left to the generic path.
    return importlib.import_module(adapter).PATCHED_MIXERS.get(type(module))


def is_one_pass_mixer(module: torch.nn.Module) -> bool:
    """Whether `module` takes its boundary states inside a forward (our GatedDeltaNets)."""
    from .gated_delta_net import PrefixGatedDeltaNet

    return isinstance(module, PrefixGatedDeltaNet)
