"""The offline byte-level tokenizer that pairs with the tiny Qwen3-Next models."""

import pytest

from hf_hybrid_cache.tiny import BYTE_TOKEN_OFFSET, TINY_VOCAB_SIZE, tiny_byte_tokenizer, tiny_qwen3_next_config


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_byte_tokenizer()


def test_special_ids_match_the_tiny_config(tokenizer):
    config = tiny_qwen3_next_config()
    assert len(tokenizer) == config.vocab_size == TINY_VOCAB_SIZE
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        config.pad_token_id,
        config.bos_token_id,
        config.eos_token_id,
    )


@pytest.mark.parametrize("text", ["plain ascii", "héllo wörld 🙂\n\ttabs", ""], ids=["ascii", "unicode", "empty"])
def test_round_trip_one_token_per_byte(tokenizer, text):
    ids = tokenizer(text).input_ids
    assert ids == [BYTE_TOKEN_OFFSET + b for b in text.encode("utf-8")]
    assert tokenizer.decode(ids) == text


def test_every_model_id_decodes(tokenizer):
    # A random tiny model may emit any id below the vocab size; none may be unknown to the tokenizer.
    tokens = tokenizer.convert_ids_to_tokens(list(range(TINY_VOCAB_SIZE)))
    assert None not in tokens and len(set(tokens)) == TINY_VOCAB_SIZE


def test_chat_template_ends_turns_with_eos(tokenizer):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(text).input_ids
    assert ids.count(tokenizer.eos_token_id) == 2 and ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "system\nbe brief\nuser\nhi\nassistant\n"
