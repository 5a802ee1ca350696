"""Auto mode: generate() without a cache runs on a HybridPrefixCache by itself; what caching cannot serve
runs exactly as unpatched generate; explicit caches keep working; a text-generation pipeline with chat
messages reuses the conversation's prefix."""

import pytest
import torch
from transformers import DynamicCache, pipeline

import hf_hybrid_cache as hhc
from cold_oracle import random_tokens
from hf_hybrid_cache.tiny import tiny_byte_tokenizer, tiny_qwen3_next

GREEDY = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)


@pytest.fixture
def auto_model():
    """A fresh patched model in auto mode over its own store (turned off again after the test)."""
    store = hhc.PrefixStore(block_size=16, max_bytes=64 << 20)
    model = hhc.patch(tiny_qwen3_next(seed=0), auto=True, store=store)
    yield model, store
    hhc.patch(model, auto=False)


def generate(model, input_ids, **kwargs):
    return model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **{**GREEDY, **kwargs})


def test_generate_without_a_cache_reuses_prefixes(auto_model, cold_model):
    model, store = auto_model
    prefix = random_tokens(50, seed=1)
    first, second = (torch.cat([prefix, random_tokens(10, seed=s)])[None] for s in (2, 3))
    for prompt, expected_cached in ((first, 0), (second, 48)):
        output = generate(model, prompt)
        assert torch.equal(output, generate(cold_model, prompt))
        assert hhc.cached_tokens(prompt) == expected_cached
    assert store.stats()["hit_tokens"] == 48


@pytest.mark.parametrize(
    "setting", [dict(use_cache=False), dict(cache_implementation="static")], ids=["no-cache", "static-cache"]
)
def test_what_caching_cannot_serve_runs_as_unpatched(auto_model, cold_model, setting):
    """(Batches, beams and samples are served: tests/models/test_batches.py.)"""
    model, store = auto_model
    prompt = random_tokens(40, seed=4)[None]
    torch.manual_seed(0)
    output = generate(model, prompt, **setting)
    torch.manual_seed(0)
    assert torch.equal(output, generate(cold_model, prompt, **setting))
    assert hhc.cached_tokens(prompt) is None and store.stats()["queries"] == 0


def test_explicit_caches_still_work(auto_model, cold_model):
    model, store = auto_model
    prompt = random_tokens(40, seed=5)[None]
    cold = generate(cold_model, prompt)
    assert torch.equal(generate(model, prompt, past_key_values=DynamicCache(config=model.config)), cold)
    assert store.stats()["queries"] == 0
    other = hhc.PrefixStore(block_size=16)
    assert torch.equal(generate(model, prompt, past_key_values=hhc.HybridPrefixCache(model, store=other)), cold)
    assert (store.stats()["queries"], other.stats()["queries"]) == (0, 1)


def test_auto_mode_turns_off_and_uses_the_process_wide_store_by_default(cold_model):
    model = hhc.patch(tiny_qwen3_next(seed=0), auto=True)
    prompt = random_tokens(40, seed=6)[None]
    generate(model, prompt)
    assert hhc.get_default_store().stats()["queries"] == 1
    assert hhc.patch(model) is model and model._hf_hybrid_cache_auto  # patch() alone leaves it on
    hhc.patch(model, auto=False)
    assert torch.equal(generate(model, prompt), generate(cold_model, prompt))
    assert hhc.get_default_store().stats()["queries"] == 1


def test_bad_auto_settings(model):
    with pytest.raises(ValueError, match="store= is the store auto mode uses"):
        hhc.patch(model, store=hhc.PrefixStore())
    with pytest.raises(TypeError, match="store must be a PrefixStore"):
        hhc.patch(model, auto=True, store="big")
    from transformers import Qwen3NextModel

    with pytest.raises(ValueError, match="has no generate"):
        hhc.patch(Qwen3NextModel(model.config), auto=True)


def test_chat_pipeline_reuses_the_conversation(auto_model, cold_model):
    model, store = auto_model
    tokenizer = tiny_byte_tokenizer()
    # Printable replies re-encode to the tokens generated, as a real tokenizer's do.
    readable = set(tokenizer("".join(map(chr, range(0x20, 0x7F)))).input_ids) | {tokenizer.eos_token_id}
    settings = dict(max_new_tokens=12, do_sample=False, suppress_tokens=[i for i in range(len(tokenizer)) if i not in readable])
    pipes = [pipeline("text-generation", model=m, tokenizer=tokenizer) for m in (model, cold_model)]
    messages = [{"role": "system", "content": "You are terse. " * 5}, {"role": "user", "content": "hello"}]
    replies = [pipe(messages, **settings)[0]["generated_text"] for pipe in pipes]
    assert replies[0] == replies[1]
    follow_up = replies[0] + [{"role": "user", "content": "and then?"}]
    hits_before = store.stats()["hit_tokens"]
    replies = [pipe(follow_up, **settings)[0]["generated_text"] for pipe in pipes]
    assert replies[0] == replies[1]
    assert store.stats()["hit_tokens"] - hits_before >= 80  # the whole first turn, in 16-token blocks
