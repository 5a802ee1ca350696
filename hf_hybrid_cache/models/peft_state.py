"""What a model's forward depends on that its parameters do not show: the runtime state of peft adapters.

Switching the active adapter (`set_adapter`), disabling adapters (`disable_adapter()`, `disable_adapter_layers`),
merging one into the base weights, or rescaling one changes what every later forward computes while leaving
the parameters (and so the model fingerprint) as they were. Each adapter layer's state (active and merged
adapters, disabled flag, and its per-adapter settings such as `scaling`, `r`, `lora_alpha`, `use_dora`) is
digested into the root of the block keys, so a hit never crosses such a change and switching back hits
again. Adding, removing or training adapter weights changes the parameters themselves (the fingerprint's
business). Checked with peft 0.21.
"""

import sys

import torch

from ..store.hashing import digest


def adapter_state(model: torch.nn.Module) -> bytes | None:
    """A digest of every peft adapter layer's runtime state: b"" for a model without one; None when a layer
    carries per-call hooks (peft's `adapter_names=` for mixed batches, aLoRA offsets), whose choice the keys
    cannot see (such a request runs uncached)."""
    if "peft" not in sys.modules:  # no adapter layer can exist before peft is imported
        return b""
    parts = []
    for name, module in model.named_modules():
        if not _is_adapter_layer(module):
            continue
        if module._forward_pre_hooks:
            return None
        settings = [
            (setting, _canonical(getattr(module, setting, None))) for setting in getattr(module, "other_param_names", ())
        ]
        parts.append(repr((
            name,
            bool(module._disable_adapters),
            list(module.active_adapters),
            list(getattr(module, "merged_adapters", ())),
            settings,
        )).encode())
    return digest(b"hf_hybrid_cache/peft", *parts) if parts else b""


def _is_adapter_layer(module: torch.nn.Module) -> bool:
    """peft's tuner layers (`BaseTunerLayer`) and its trainable copies of whole modules (`modules_to_save`)."""
    return hasattr(module, "_disable_adapters") and hasattr(module, "active_adapters")


def _canonical(value) -> object:
    """A repr-stable form: dictionaries (plain or `nn.ModuleDict`) as sorted items."""
    if isinstance(value, (dict, torch.nn.ModuleDict)):
        return sorted((str(key), _canonical(item)) for key, item in value.items())
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    return repr(value)
