"""What the installed transformers must do for prefix caching to be right (pyproject's minimum, 5.24)."""

import torch
from transformers import DynamicCache

from cold_oracle import random_tokens


def test_multi_token_step_continues_from_cached_gdn_state(cold_model):
    """transformers PR #45513: a multi-token forward on a populated cache must start from the cached
    conv/SSM state. Releases without it silently restart the GDN layers from zeros."""
    tokens = random_tokens(70, seed=20)[None]
    with torch.no_grad():
        full = cold_model(tokens).logits
        cache = DynamicCache(config=cold_model.config)
        cold_model(tokens[:, :50], past_key_values=cache)
        continued = cold_model(tokens[:, 50:], past_key_values=cache).logits
    assert (continued - full[:, 50:]).abs().max().item() < 1e-4
