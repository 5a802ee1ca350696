"""Cached runs equal cold `DynamicCache` runs: equal greedy tokens, first-step logits within 1e-3, and
the number of prompt tokens served from the store is what the mode's rules predict."""

import pytest
import torch

import hf_hybrid_cache as hhc
from cold_oracle import assert_same_as_cold, cold_generate, generate, random_tokens

MODES = ["none", "align", "branch", "all"]
# 64 is a multiple of the kernels' 64-token chunk; 48 and 40 are not.
BLOCK_SIZES = [64, 48, 40]
MAX_NEW_TOKENS = 6


def saved_boundaries(mode: str, block_size: int, prompt_len: int, processed_len: int) -> set[int]:
    """Token counts at which one request into an empty store saves GDN states, per the modes' definitions
    (branch: no cached path to leave yet, and only the last boundary past the prompt is kept)."""
    boundaries = list(range(block_size, processed_len + 1, block_size))
    if mode == "none":
        return set()
    if mode == "all":
        return set(boundaries)
    before_last_token = set([b for b in boundaries if b <= prompt_len - 1][-1:])
    past_the_prompt = [b for b in boundaries if b >= prompt_len]
    return before_last_token | set(past_the_prompt[-1:] if mode == "branch" else past_the_prompt)


def expected_hit(saved: set[int], shared_len: int, prompt_len: int) -> int:
    return max((b for b in saved if b <= min(shared_len, prompt_len - 1)), default=0)


def make_store(mode, block_size):
    return hhc.PrefixStore(block_size=block_size, mamba_cache_mode=mode, max_bytes=64 << 20)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("block_size", BLOCK_SIZES, ids=lambda bs: f"bs{bs}")
@pytest.mark.parametrize("shared", ["bs-1", "bs", "bs+1", "2bs"])
def test_shared_prefix(model, cold_model, mode, block_size, shared):
    shared_len = {"bs-1": block_size - 1, "bs": block_size, "bs+1": block_size + 1, "2bs": 2 * block_size}[shared]
    prefix = random_tokens(shared_len, seed=1)
    first = torch.cat([prefix, random_tokens(20, seed=2)])[None]
    tail = random_tokens(20, seed=3)
    tail[0] = (first[0, shared_len] + 1) % 300 + 3  # the prompts part right after the shared prefix
    second = torch.cat([prefix, tail])[None]
    store = make_store(mode, block_size)

    first_cache = hhc.HybridPrefixCache(model, store=store)
    assert_same_as_cold(generate(model, first, first_cache), cold_generate(cold_model, first))
    assert first_cache.num_cached_tokens == 0

    second_cache = hhc.HybridPrefixCache(model, store=store)
    assert_same_as_cold(generate(model, second, second_cache), cold_generate(cold_model, second))
    saved = saved_boundaries(mode, block_size, first.shape[1], first.shape[1] + MAX_NEW_TOKENS - 1)
    assert second_cache.num_cached_tokens == expected_hit(saved, shared_len, second.shape[1])
    if mode != "none" and shared_len >= block_size + 1:
        assert second_cache.num_cached_tokens > 0  # the test must exercise a real hit somewhere


@pytest.mark.parametrize("mode", ["align", "branch", "all"])
@pytest.mark.parametrize("block_size", BLOCK_SIZES, ids=lambda bs: f"bs{bs}")
def test_exact_repeat_backs_off_one_boundary(model, cold_model, mode, block_size):
    prompt = random_tokens(2 * block_size, seed=4)[None]  # ends on a boundary: the hit must stop before it
    store = make_store(mode, block_size)
    cold = cold_generate(cold_model, prompt)
    for expected_cached in (0, block_size, block_size):
        cache = hhc.HybridPrefixCache(model, store=store)
        assert_same_as_cold(generate(model, prompt, cache), cold)
        assert cache.num_cached_tokens == expected_cached


@pytest.mark.parametrize("mode", ["align", "branch", "all"])
def test_multi_turn_hits_whole_history(model, cold_model, mode):
    block_size = 40
    store = make_store(mode, block_size)
    turn1 = random_tokens(70, seed=5)[None]
    reply = generate(model, turn1, hhc.HybridPrefixCache(model, store=store), max_new_tokens=30).sequences
    turn2 = torch.cat([reply[0], random_tokens(15, seed=6)])[None]

    cache = hhc.HybridPrefixCache(model, store=store)
    assert_same_as_cold(generate(model, turn2, cache), cold_generate(cold_model, turn2))
    processed_in_turn1 = 70 + 30 - 1
    # Boundary 80 was reached while decoding turn 1: every mode saved it (branch: as the last one).
    assert cache.num_cached_tokens == processed_in_turn1 // block_size * block_size == 80


def test_batch_with_left_padding_equals_cold(model, cold_model):
    store = make_store("all", 40)
    long_prompt, short_prompt = random_tokens(90, seed=7), random_tokens(61, seed=8)
    # Seed the store with the long prompt, so a (wrong) hit would be possible.
    generate(model, long_prompt[None], hhc.HybridPrefixCache(model, store=store))
    batch = torch.zeros(2, 90, dtype=torch.long)
    mask = torch.zeros(2, 90, dtype=torch.long)
    batch[0], mask[0] = long_prompt, 1
    batch[1, 29:], mask[1, 29:] = short_prompt, 1
    cache = hhc.HybridPrefixCache(model, store=store)
    output = generate(model, batch, cache, attention_mask=mask)
    cold = cold_generate(cold_model, batch, attention_mask=mask)
    assert_same_as_cold(output, cold)
    # The long row is served from the store (the short one shares nothing with it); tests/models/test_batches.py.
    assert cache.cached_tokens_per_row == [80, 0]


def test_sampling_with_fixed_seed_equals_cold(model, cold_model):
    store = make_store("align", 48)
    prompt = random_tokens(120, seed=9)[None]
    generate(model, prompt, hhc.HybridPrefixCache(model, store=store))
    cache = hhc.HybridPrefixCache(model, store=store)
    torch.manual_seed(123)
    output = generate(model, prompt, cache, do_sample=True, top_k=20, max_new_tokens=10)
    torch.manual_seed(123)
    cold = cold_generate(cold_model, prompt, do_sample=True, top_k=20, max_new_tokens=10)
    assert cache.num_cached_tokens == 96
    assert_same_as_cold(output, cold)


def test_cache_keyword_and_streamer(model, cold_model):
    """The 5.x spelling `cache=` works, and a streamer sees exactly the generated tokens."""
    from transformers.generation.streamers import BaseStreamer

    class Collector(BaseStreamer):
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value.reshape(-1))

        def end(self):
            pass

    store = make_store("align", 40)
    prompt = random_tokens(100, seed=10)[None]
    model.generate(prompt, cache=hhc.HybridPrefixCache(model, store=store), max_new_tokens=4, do_sample=False)
    cache, streamer = hhc.HybridPrefixCache(model, store=store), Collector()
    output = model.generate(prompt, cache=cache, max_new_tokens=4, do_sample=False, streamer=streamer)
    cold = cold_generate(cold_model, prompt, max_new_tokens=4)
    assert cache.num_cached_tokens == 80
    assert torch.equal(output, cold.sequences)
    # The first chunk a streamer gets is the prompt, then one token per step.
    assert torch.equal(torch.cat(streamer.chunks[1:]), output[0, 100:])


def test_patched_model_unchanged_without_our_cache(model, cold_model):
    prompt = random_tokens(75, seed=11)[None]
    cold = cold_generate(cold_model, prompt)
    assert_same_as_cold(cold_generate(model, prompt), cold)
    without_cache = model.generate(prompt, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(prompt))
    assert torch.equal(without_cache, cold.sequences)


def test_reused_cache_continues_a_conversation(model, cold_model):
    """Passing the same cache to a second generate continues from its live state, like a DynamicCache."""
    store = make_store("align", 40)
    cache = hhc.HybridPrefixCache(model, store=store)
    first = generate(model, random_tokens(50, seed=12)[None], cache, max_new_tokens=8).sequences
    follow_up = torch.cat([first[0], random_tokens(30, seed=13)])[None]
    output = generate(model, follow_up, cache)
    assert_same_as_cold(output, cold_generate(cold_model, follow_up))
    assert cache.num_cached_tokens == 0  # served from its own live state, not the store
    with pytest.raises(ValueError, match="new HybridPrefixCache"):
        generate(model, random_tokens(120, seed=14)[None], cache)


@pytest.mark.parametrize("mode", ["align", "all"])
@pytest.mark.parametrize("block_size", [1, 7, 40], ids=lambda bs: f"bs{bs}")
def test_one_token_tail_after_a_hit(model, cold_model, mode, block_size):
    """A repeat of a prompt one token past a boundary leaves a single token to compute: it runs as a
    one-token step on the restored state (other engines produced NaN there)."""
    prompt = random_tokens(3 * block_size + 1, seed=15)[None]
    store = make_store(mode, block_size)
    generate(model, prompt, hhc.HybridPrefixCache(model, store=store))
    cache = hhc.HybridPrefixCache(model, store=store)
    output = generate(model, prompt, cache)
    assert cache.num_cached_tokens == 3 * block_size
    assert torch.isfinite(output.logits[0]).all()
    assert_same_as_cold(output, cold_generate(cold_model, prompt))


@pytest.mark.parametrize("block_size", [40, 16], ids=lambda bs: f"bs{bs}")
def test_branch_saves_where_prompts_part(model, cold_model, block_size):
    """Three prompts share a system prompt. The second misses it (no state there yet) but, leaving the
    cached path there, saves the state at the branch point; the third hits it. align never saves it."""
    system = random_tokens(3 * block_size + 5, seed=20)
    # Tails longer than a block: each prompt's last boundary before its final token lies past the system prompt.
    prompts = [torch.cat([system, random_tokens(block_size + 25, seed=21 + i)])[None] for i in range(3)]
    branch_point = len(system) // block_size * block_size
    hits = {}
    for mode in ("branch", "align"):
        store = make_store(mode, block_size)
        hits[mode] = []
        for prompt in prompts:
            cache = hhc.HybridPrefixCache(model, store=store)
            assert_same_as_cold(generate(model, prompt, cache), cold_generate(cold_model, prompt))
            hits[mode].append(cache.num_cached_tokens)
        store.check_invariants()
    assert hits["branch"] == [0, 0, branch_point]
    assert hits["align"] == [0, 0, 0]
