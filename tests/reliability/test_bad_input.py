"""Bad input gets an error that names the fix, and nothing reaches the store: a cache used with another
model, a store reused with another model layout, invalid store options, a budget below one block, an
empty prompt, token ids outside the vocabulary, beam search."""

import pytest
import torch

import hf_hybrid_cache as hhc
from hf_hybrid_cache.tiny import tiny_qwen3_next
from reliability_support import assert_same_as_cold, assert_store_at_rest, cold_generate, generate, random_tokens

BLOCK_SIZE = 16
PROMPT = random_tokens(40, seed=40)[None]


def new_store(**kwargs):
    kwargs.setdefault("block_size", BLOCK_SIZE)
    kwargs.setdefault("mamba_cache_mode", "all")
    return hhc.PrefixStore(**kwargs)


def assert_nothing_stored(store):
    stats = store.stats()
    assert (stats["queries"], stats["blocks"], stats["snapshots"], stats["bytes_used"]) == (0, 0, 0, 0)


@pytest.fixture(scope="module")
def unpatched_other_model():
    return tiny_qwen3_next(seed=1)


@pytest.mark.parametrize("other", ["patched", "unpatched"])
def test_cache_used_with_another_model(model, cold_model, other_model, unpatched_other_model, other):
    other = {"patched": other_model, "unpatched": unpatched_other_model}[other]
    store = new_store()
    cache = hhc.HybridPrefixCache(model, store=store)
    with pytest.raises((ValueError, RuntimeError), match="built for") as error:
        generate(other, PROMPT, cache)
    assert "HybridPrefixCache(" in str(error.value)  # the fix: a cache per model
    assert_nothing_stored(store)
    # The cache is untouched: it still serves its own model exactly.
    assert_same_as_cold(generate(model, PROMPT, cache), cold_generate(cold_model, PROMPT))


def test_cache_with_history_used_with_another_unpatched_model(model, unpatched_other_model):
    """The dangerous case: a multi-turn cache holding model A's state continued by model B."""
    store = new_store()
    cache = hhc.HybridPrefixCache(model, store=store)
    reply = generate(model, PROMPT, cache).sequences
    stats = store.stats()
    with pytest.raises(RuntimeError, match="built for"):
        generate(unpatched_other_model, torch.cat([reply, PROMPT], dim=1), cache)
    assert store.stats() == stats



@pytest.mark.parametrize(
    "make_other",
    [
        lambda: hhc.patch(tiny_qwen3_next(seed=0, num_key_value_heads=1)),
        lambda: hhc.patch(tiny_qwen3_next(seed=0, num_hidden_layers=8)),
        lambda: hhc.patch(tiny_qwen3_next(seed=0, dtype=torch.bfloat16)),
    ],
    ids=["config-kv-heads", "config-num-layers", "dtype-bf16"],
)
def test_store_reused_with_another_model_layout(model, make_other):
    store = new_store()
    generate(model, PROMPT, hhc.HybridPrefixCache(model, store=store), max_new_tokens=1)
    stats, keys = store.stats(), store.lru_keys()
    with pytest.raises(ValueError, match=r"This PrefixStore holds blocks for .* but the model is .*its own store"):
        hhc.HybridPrefixCache(make_other(), store=store)
    assert store.stats() == stats and store.lru_keys() == keys
    assert_store_at_rest(store)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(block_size=0), "block_size must be an int >= 1"),
        (dict(block_size=-16), "block_size must be an int >= 1"),
        (dict(block_size=16.0), "block_size must be an int >= 1"),
        (dict(block_size=True), "block_size must be an int >= 1"),
        (dict(block_size="64"), "block_size must be an int >= 1"),
        (dict(mamba_cache_mode="ALL"), r"mamba_cache_mode must be one of \('none', 'align', 'branch', 'all'\)"),
        (dict(mamba_cache_mode=None), "mamba_cache_mode must be one of"),
        (dict(max_bytes=0), "max_bytes must be a positive int"),
        (dict(max_bytes=-1), "max_bytes must be a positive int"),
        (dict(max_bytes=1e9), "max_bytes must be a positive int"),
        (dict(max_bytes=True), "max_bytes must be a positive int"),
    ],
    ids=lambda value: str(value) if isinstance(value, dict) else "",
)
def test_invalid_store_options(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        hhc.PrefixStore(**kwargs)
    assert "for example" in str(error.value) or "one of" in str(error.value)  # names a valid value


def test_model_on_the_meta_device_is_patched_but_not_served():
    """patch() runs nothing, so a model not loaded yet can be patched; a cache needs its weights."""
    meta_model = hhc.patch(tiny_qwen3_next(seed=0).to("meta"))
    with pytest.raises(ValueError, match="meta device.*load the weights"):
        hhc.HybridPrefixCache(meta_model)


@pytest.mark.parametrize("short_by", ["one-byte", "below-one-snapshot"])
def test_budget_below_one_block_says_how_large_it_must_be(model, cold_model, short_by):
    probe = new_store()
    hhc.HybridPrefixCache(model, store=probe)
    needed = probe.page_bytes + probe.snapshot_bytes
    max_bytes = needed - 1 if short_by == "one-byte" else probe.snapshot_bytes - 1
    store = new_store(max_bytes=max_bytes)
    with pytest.raises(ValueError, match=f"Use max_bytes >= {needed:,}") as error:
        hhc.HybridPrefixCache(model, store=store)
    assert f"one state snapshot {probe.snapshot_bytes:,} bytes" in str(error.value)
    assert store.layout is None  # not bound: a corrected store can still be made
    assert_nothing_stored(store)
    # The size named is enough.
    store = new_store(max_bytes=needed)
    cache = hhc.HybridPrefixCache(model, store=store)
    assert_same_as_cold(generate(model, PROMPT, cache), cold_generate(cold_model, PROMPT))
    assert store.stats()["blocks"] == 1


@pytest.mark.parametrize(
    "input_ids, message",
    [
        (torch.zeros(1, 0, dtype=torch.long), r"input_ids must be a non-empty \[batch, seq_len\] tensor.*tokenize a non-empty prompt"),
        (torch.zeros(0, 5, dtype=torch.long), r"input_ids must be a non-empty"),
        (torch.arange(3, 43), r"input_ids must be a non-empty \[batch, seq_len\]"),
        (torch.cat([PROMPT[:, :-1], torch.tensor([[320]])], dim=1), r"\[\d+, 320\] but the model's vocabulary is \[0, 319\].*tokenizer"),
        (torch.cat([torch.tensor([[-1]]), PROMPT], dim=1), r"\[-1, .*\] but the model's vocabulary is \[0, 319\]"),
    ],
    ids=["empty-prompt", "empty-batch", "1d", "id-above-vocab", "negative-id"],
)
def test_bad_input_ids(model, input_ids, message):
    store = new_store()
    cache = hhc.HybridPrefixCache(model, store=store)
    with pytest.raises(ValueError, match=message):
        model.generate(input_ids, past_key_values=cache, max_new_tokens=2, do_sample=False)
    assert_nothing_stored(store)
    assert cache.get_seq_length() == 0


def test_wrong_argument_types(model, cold_model):
    with pytest.raises(ValueError, match=r"not patched: call hf_hybrid_cache.patch\(model\)"):
        hhc.HybridPrefixCache(cold_model)
    with pytest.raises(ValueError, match=r"not patched: call hf_hybrid_cache.patch\(model\)"):
        hhc.HybridPrefixCache(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="cannot serve Linear. Supported: decoder-only models"):
        hhc.patch(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="store must be a PrefixStore or None, got dict"):
        hhc.HybridPrefixCache(model, store={})
    with pytest.raises(TypeError, match="namespace must be a str or None, got int"):
        hhc.HybridPrefixCache(model, namespace=7)
    assert hhc.get_default_store().stats()["blocks"] == 0
