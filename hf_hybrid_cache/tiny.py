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


# Special tokens of the byte-level tokenizer, at the ids the tiny config declares (pad 0, bos 1, eos 2).
# eos is the end-of-turn marker, so generation stops where a chat turn ends.
TINY_SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|im_end|>", "<|im_start|>")
# Byte b has id BYTE_TOKEN_OFFSET + b; the ids above the 256 bytes are reserved up to the vocab size.
BYTE_TOKEN_OFFSET = len(TINY_SPECIAL_TOKENS)
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_byte_tokenizer(vocab_size: int = TINY_VOCAB_SIZE):
    """A byte-level `PreTrainedTokenizerFast` for the tiny models, built offline with `tokenizers`.

    Ids: 0 `<|pad|>`, 1 `<|bos|>`, 2 `<|im_end|>` (eos), 3 `<|im_start|>`, then the 256 bytes in byte
    order, then `<|reserved_i|>` up to `vocab_size`, so every id the model can emit decodes. Any text
    encodes (no unknown token) and decodes back to itself; the chat template is Qwen's ChatML layout.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    num_reserved = vocab_size - BYTE_TOKEN_OFFSET - 256
    if num_reserved < 0:
        raise ValueError(f"vocab_size={vocab_size} is too small: the byte tokenizer needs {BYTE_TOKEN_OFFSET + 256}")
    reserved = tuple(f"<|reserved_{i}|>" for i in range(num_reserved))
    byte_chars = bytes_to_unicode()  # byte -> printable stand-in, the alphabet ByteLevel maps bytes to
    vocab = {token: token_id for token_id, token in enumerate(TINY_SPECIAL_TOKENS)}
    vocab.update({byte_chars[b]: BYTE_TOKEN_OFFSET + b for b in range(256)})
    vocab.update({token: BYTE_TOKEN_OFFSET + 256 + i for i, token in enumerate(reserved)})

    # No merges: every byte is one token, which keeps prompts long enough to fill cache blocks.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # Registered as special so they are matched whole in text (the chat template writes them as text).
    specials = (*TINY_SPECIAL_TOKENS, *reserved)
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=TINY_SPECIAL_TOKENS[0],
        bos_token=TINY_SPECIAL_TOKENS[1],
        eos_token=TINY_SPECIAL_TOKENS[2],
        chat_template=TINY_CHAT_TEMPLATE,
        model_max_length=tiny_qwen3_next_config().max_position_embeddings,
    )
