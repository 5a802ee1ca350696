"""The gated-delta-rule mixers that run on our one-pass kernels (and the adapter module of each), and the
mixers whose transformers forward cannot continue from a restored state.

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
}

# transformers class name -> why a prefix cannot be continued exactly on it (checked with transformers 5.24)
UNSUPPORTED_MIXERS = {
    "JambaMambaMixer": (
        "transformers' Jamba Mamba layer starts every multi-token step from a zero SSM state (its selective scan "
        "takes no initial state; only one-token steps read the cache), so a prompt continued after a restored "
        "prefix would differ from a cold run"
    ),
}


def unsupported_reason(module: torch.nn.Module) -> str | None:
    """Why `module` cannot be served, or None."""
    return UNSUPPORTED_MIXERS.get(type(module).__name__)


def patched_mixer_class(module: torch.nn.Module) -> type | None:
    """Our one-pass class for `module` (one of transformers' GatedDeltaNets), or None if it has none."""
    adapter = ADAPTER_MODULES.get(type(module).__name__)
    if adapter is None:
        return None
    # By class, not name alone: a remote-code class of the same name is left to the generic path.
    return importlib.import_module(adapter).PATCHED_MIXERS.get(type(module))


def is_patched_mixer(module: torch.nn.Module) -> bool:
    from .gated_delta_net import PrefixGatedDeltaNet

    return isinstance(module, PrefixGatedDeltaNet)
