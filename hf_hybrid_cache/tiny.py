"""Tiny Qwen3-Next models built locally from a config with a fixed seed: no download, for tests,
benchmarks and the demo's default. Their outputs are nonsense; their shapes and code paths are real.
"""

import torch
from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

# Large enough for a byte-level tokenizer (256 bytes + a few special tokens).
TINY_VOCAB_SIZE = 320


def tiny_qwen3_next_config(
    num_hidden_layers: int = 4,
    hidden_size: int = 64,
    vocab_size: int = TINY_VOCAB_SIZE,
    **overrides,
) -> Qwen3NextConfig:
    """A small Qwen3-Next config: every 4th layer full attention, the others Gated DeltaNet.

    The larger `initializer_range` widens the gap between the top two logits (≈0.1 instead of ≈0.01),
    so greedy comparisons between cached and cold runs are not decided by float noise.
    """
    head_dim = max(16, hidden_size // 4)
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=head_dim,
        linear_value_head_dim=head_dim,
        linear_conv_kernel_dim=4,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=hidden_size,
        shared_expert_intermediate_size=hidden_size,
        max_position_embeddings=8192,
        initializer_range=0.08,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    fields.update(overrides)
    return Qwen3NextConfig(**fields)


def tiny_qwen3_next(
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    **config_overrides,
) -> Qwen3NextForCausalLM:
    """Build a randomly initialised Qwen3-Next in eval mode; the same seed gives the same weights."""
    config = tiny_qwen3_next_config(**config_overrides)
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3NextForCausalLM(config)
    # Name the model so its fingerprint (and error messages) say where it came from.
    model.config.name_or_path = f"tiny-qwen3-next(seed={seed})"
    return model.to(dtype).eval()
