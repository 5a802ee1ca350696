"""The cold `DynamicCache` oracle every cached run is held to, and deterministic prompts.

Imported by test modules as `from cold_oracle import ...` (tests/ is on sys.path through its conftest).
"""

import torch
from transformers import DynamicCache

FIRST_LOGITS_TOLERANCE = 1e-3


def random_tokens(num_tokens: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Ids 3.. avoid pad/bos/eos, so generation never stops early.
    return torch.randint(3, 300, (num_tokens,), generator=generator)


def generate(model, input_ids, cache, attention_mask=None, **kwargs):
    """Greedy by default; returns generate's dict output with per-step logits."""
    kwargs.setdefault("max_new_tokens", 6)
    kwargs.setdefault("do_sample", False)
    return model.generate(
        input_ids,
        attention_mask=attention_mask if attention_mask is not None else torch.ones_like(input_ids),
        past_key_values=cache,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
        **kwargs,
    )


def cold_generate(cold_model, input_ids, attention_mask=None, **kwargs):
    return generate(cold_model, input_ids, DynamicCache(config=cold_model.config), attention_mask, **kwargs)


def assert_same_as_cold(output, cold_output, tolerance: float = FIRST_LOGITS_TOLERANCE):
    assert torch.equal(output.sequences, cold_output.sequences)
    max_diff = (output.logits[0] - cold_output.logits[0]).abs().max().item()
    assert max_diff < tolerance, f"first-step logits differ by {max_diff} (tolerance {tolerance})"


@torch.no_grad()
def split_continuation_error(cold_model, num_tokens: int = 120, split: int = 80) -> float:
    """Largest logit difference between one forward over `num_tokens` and the same tokens run as a prefill of
    `split` then one multi-token step on its cache: the model's own error when continuing a cache, which
    bounds how exactly any cached run of it can match a cold one."""
    tokens = random_tokens(num_tokens, seed=99)[None]
    full = cold_model(tokens).logits
    cache = DynamicCache(config=cold_model.config)
    cold_model(tokens[:, :split], past_key_values=cache)
    positions = torch.arange(split, num_tokens)[None]
    continued = cold_model(tokens[:, split:], past_key_values=cache, position_ids=positions).logits
    return (continued - full[:, split:]).abs().max().item()
