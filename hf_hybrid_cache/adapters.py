"""Which model families are supported, and the adapter module that knows each one's layers.

An adapter module provides `layout(model) -> ModelLayout` and `patch_layers(model)`; it is imported
only when a model of its family shows up.
"""

import importlib
from types import ModuleType

import torch

ADAPTER_MODULES = {"qwen3_next": "hf_hybrid_cache.qwen3_next"}


def adapter_for(model: torch.nn.Module) -> ModuleType:
    """The adapter module for `model`, or a ValueError listing what is supported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    supported = ", ".join(sorted(ADAPTER_MODULES))
    if model_type not in ADAPTER_MODULES:
        raise ValueError(
            f"hf_hybrid_cache supports model types: {supported} (causal LMs such as Qwen3NextForCausalLM); "
            f"got {type(model).__name__} with model_type={model_type!r}."
        )
    if not hasattr(model, "generate") or not hasattr(model, "model"):
        raise ValueError(
            f"hf_hybrid_cache needs the causal LM with generate() (for {supported}: Qwen3NextForCausalLM), "
            f"got {type(model).__name__}."
        )
    return importlib.import_module(ADAPTER_MODULES[model_type])
