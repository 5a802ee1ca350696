"""Loads the demo's model and tokenizer: the offline tiny Qwen3-Next by default, or a user's checkpoint of any
family `hf_hybrid_cache.patch` supports.

No network access happens for the default; `--model` goes through `from_pretrained`, which reads a local
folder or the Hugging Face cache (and downloads only if the user's environment allows it).
"""

from dataclasses import dataclass

import torch

import hf_hybrid_cache as hhc
from hf_hybrid_cache.tiny import tiny_byte_tokenizer, tiny_qwen3_next, unreadable_token_ids

# Sizes of the offline model (`--tiny-size`). "demo": large enough that a cold turn of the default chat takes
# ~0.8 s on a 2-core CPU, so the plot shows reuse rather than noise (90M parameters, built in about a
# second); "test": the same architecture at hidden 128, for the test suite.
TINY_SIZES = {"demo": dict(num_hidden_layers=8, hidden_size=768), "test": dict(num_hidden_layers=8, hidden_size=128)}
TINY_NOTICE = (
    "Default model: a small Qwen3-Next ({size}) with random weights (seed {seed}), built locally: its replies are "
    "nonsense, but the caching is real. Pass `--model PATH_OR_ID` to chat with a real checkpoint (Qwen3.5, "
    "Qwen3-Next, Nemotron-H, Granite 4, LFM2, Llama, ...)."
)


@dataclass
class LoadedModel:
    """A patched model, its tokenizer, and what the UI says about it."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    notice: str
    # Extra generate() arguments the model needs (the tiny model's token restriction).
    generate_kwargs: dict


def load_model(model_id: str | None = None, seed: int = 0, device: str = "cpu", tiny_size: str = "demo") -> LoadedModel:
    """Build the offline model (`model_id=None`, sized by `tiny_size`: a key of `TINY_SIZES`) or load a causal
    LM checkpoint onto `device`, patched (a family patch() refuses raises its ValueError, which says what is
    supported)."""
    if model_id is None:
        loaded = _load_tiny(seed, TINY_SIZES[tiny_size])
        loaded.model.to(device)
    else:
        loaded = _load_checkpoint(model_id, device)
    hhc.patch(loaded.model)
    return loaded


def _load_tiny(seed: int, size: dict) -> LoadedModel:
    tokenizer = tiny_byte_tokenizer()
    model = tiny_qwen3_next(seed=seed, **size)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=model.config.name_or_path,
        notice=TINY_NOTICE.format(seed=seed, size=f"{size['num_hidden_layers']} layers, hidden {size['hidden_size']}"),
        generate_kwargs=dict(suppress_tokens=unreadable_token_ids(tokenizer)),
    )


def _load_checkpoint(model_id: str, device: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_id)
    # Straight onto an accelerator (device_map needs `accelerate`); on the CPU no map is needed.
    device_map = None if device == "cpu" else device
    model = AutoModelForCausalLM.from_pretrained(model_id, dtype="auto", device_map=device_map).eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=model_id,
        notice=f"Model: `{model_id}`.",
        generate_kwargs={},
    )
