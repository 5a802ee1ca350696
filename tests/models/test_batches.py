"""Batched generate on a `HybridPrefixCache`: every row served from the store at its own depth, repeated
prompts and samples computed once, beams as unpatched; outputs equal unpatched batched generate, and each
row's first-step logits equal that row run alone."""

import pytest
import torch

import hf_hybrid_cache as hhc
from cold_oracle import FIRST_LOGITS_TOLERANCE, random_tokens
from hf_hybrid_cache.tiny import tiny_model

# The one-pass path (GDNs, a VLM's text too, Mamba2, Mamba, LFM2's short convs, KDA beside MLA), the generic path
# (Inkling: short convs inside "hybrid_sliding" layers), sliding windows, attention only.
FAMILIES = ["qwen3_next", "qwen3_5", "qwen3_5_vl", "nemotron_h", "lfm2", "jamba", "kimi_linear", "inkling", "gemma3_text",
            "llama"]
BLOCK_SIZE = 16
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module", params=FAMILIES)
def models(request):
    """(unpatched, patched) with the same weights."""
    return tiny_model(request.param), hhc.patch(tiny_model(request.param))


def left_padded(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask `[len(prompts), longest]`, padded on the left with 0."""
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    return input_ids, mask


def chat_prompts() -> list[torch.Tensor]:
    """Three questions under one 40-token system prompt, an unrelated prompt, and the second one again."""
    system = random_tokens(40, seed=1)
    prompts = [torch.cat([system, random_tokens(length, seed)]) for length, seed in [(10, 2), (23, 3), (5, 4)]]
    return [*prompts, random_tokens(30, seed=5), prompts[1].clone()]


def run(model, input_ids, mask, cache=None, **kwargs):
    kwargs.setdefault("max_new_tokens", MAX_NEW_TOKENS)
    kwargs.setdefault("do_sample", False)
    return model.generate(
        input_ids, attention_mask=mask, past_key_values=cache, pad_token_id=0, output_logits=True,
        return_dict_in_generate=True, **kwargs,
    )


class ComputedTokens:
    """Counts the tokens the model embeds (computes) while active."""

    def __init__(self, model):
        self.count = 0
        self.handle = model.get_input_embeddings().register_forward_hook(self.hook)

    def hook(self, module, args, output):
        self.count += args[0].numel()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("mode", ["align", "branch", "all"])
def test_batch_equals_unpatched_and_each_row_alone(models, mode):
    cold_model, model = models
    prompts = chat_prompts()
    input_ids, mask = left_padded(prompts)
    store = hhc.PrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode=mode)
    cold = run(cold_model, input_ids, mask)
    for round_idx in range(2):
        cache = hhc.HybridPrefixCache(model, store=store)
        output = run(model, input_ids, mask, cache)
        assert torch.equal(output.sequences, cold.sequences)
        assert (output.logits[0] - cold.logits[0]).abs().max() < FIRST_LOGITS_TOLERANCE
        if round_idx == 0:
            # The system prompt, computed by the first row, serves the next two; the repeat is computed once.
            assert cache.cached_tokens_per_row[1:3] == [32, 32]
            assert cache.cached_tokens_per_row[4] == len(prompts[4]) - 1
        else:
            assert all(cached > 0 for cached in cache.cached_tokens_per_row)
    for row, prompt in enumerate(prompts):
        alone = run(cold_model, prompt[None], torch.ones(1, len(prompt), dtype=torch.long), max_new_tokens=1)
        assert (output.logits[0][row] - alone.logits[0][0]).abs().max() < max(1e-4, FIRST_LOGITS_TOLERANCE)
    store.check_invariants()
    assert store.stats()["pinned_blocks"] == 0 and store.stats()["reserved_snapshots"] == 0


def test_repeated_prompts_are_computed_once(models):
    """GRPO's shape: each prompt repeated in the batch. Computed: each distinct prompt but its last token
    (minus what the other's prefix served), then one token per row per step."""
    cold_model, model = models
    system = random_tokens(40, seed=1)
    first, second = (torch.cat([system, random_tokens(20, seed)]) for seed in (2, 3))
    prompts = [first] * 4 + [second] * 4
    input_ids, mask = left_padded(prompts)
    store = hhc.PrefixStore(block_size=BLOCK_SIZE)
    cache = hhc.HybridPrefixCache(model, store=store)
    with ComputedTokens(model) as computed:
        output = run(model, input_ids, mask, cache)
    assert torch.equal(output.sequences, run(cold_model, input_ids, mask).sequences)
    shared = 32  # the system prompt's last boundary, saved by the first prompt for the second
    assert computed.count == (len(first) - 1) + (len(second) - 1 - shared) + len(prompts) * MAX_NEW_TOKENS
    assert cache.cached_tokens_per_row == [0, 59, 59, 59, shared, 59, 59, 59]
    assert store.stats()["hit_tokens"] == sum(cache.cached_tokens_per_row)


def test_samples_fork_the_prompt(models):
    cold_model, model = models
    input_ids, mask = left_padded(chat_prompts()[:2])
    cache = hhc.HybridPrefixCache(model, store=hhc.PrefixStore(block_size=BLOCK_SIZE))
    settings = dict(do_sample=True, num_return_sequences=3, top_k=0)
    torch.manual_seed(0)
    with ComputedTokens(model) as computed:
        output = run(model, input_ids, mask, cache, **settings)
    torch.manual_seed(0)
    cold = run(cold_model, input_ids, mask, **settings)
    assert torch.equal(output.sequences, cold.sequences)
    assert (output.logits[0] - cold.logits[0]).abs().max() < FIRST_LOGITS_TOLERANCE
    prompt_lens = [int(row.sum()) for row in mask]
    assert computed.count == (prompt_lens[0] - 1) + (prompt_lens[1] - 1 - 32) + 6 * MAX_NEW_TOKENS
    assert cache.cached_tokens_per_row == [0, 49, 49, 32, 62, 62]


def test_one_prompt_many_samples(models):
    """One row and n samples (a vision model's text prompt included): the prompt is computed once."""
    cold_model, model = models
    prompt = chat_prompts()[1][None]
    mask = torch.ones_like(prompt)
    cache = hhc.HybridPrefixCache(model, store=hhc.PrefixStore(block_size=BLOCK_SIZE))
    settings = dict(do_sample=True, num_return_sequences=4, top_k=0)
    torch.manual_seed(1)
    with ComputedTokens(model) as computed:
        output = run(model, prompt, mask, cache, **settings)
    torch.manual_seed(1)
    assert torch.equal(output.sequences, run(cold_model, prompt, mask, **settings).sequences)
    assert computed.count == (prompt.shape[1] - 1) + 4 * MAX_NEW_TOKENS
    assert cache.cached_tokens_per_row == [0] + [prompt.shape[1] - 1] * 3


def test_beam_search_runs_as_unpatched_with_the_prompt_served(models):
    cold_model, model = models
    input_ids, mask = left_padded(chat_prompts()[:2])
    store = hhc.PrefixStore(block_size=BLOCK_SIZE)
    cold = cold_model.generate(input_ids, attention_mask=mask, num_beams=3, max_new_tokens=6, pad_token_id=0)
    for _ in range(2):
        cache = hhc.HybridPrefixCache(model, store=store)
        output = model.generate(input_ids, attention_mask=mask, past_key_values=cache, num_beams=3, max_new_tokens=6, pad_token_id=0)
        assert torch.equal(output, cold)
    assert cache.cached_tokens_per_row == [48, 49, 49, 48, 62, 62]  # beams after the first: forks
    assert store.stats()["pinned_blocks"] == 0 and store.stats()["reserved_snapshots"] == 0


def test_each_row_publishes_what_it_generated(models):
    """The next turn of a batch row, run alone, hits past that row's prompt."""
    cold_model, model = models
    prompts = chat_prompts()[:3]
    input_ids, mask = left_padded(prompts)
    store = hhc.PrefixStore(block_size=BLOCK_SIZE)
    output = run(model, input_ids, mask, hhc.HybridPrefixCache(model, store=store), max_new_tokens=24)
    for row, prompt in enumerate(prompts):
        turn = torch.cat([output.sequences[row, input_ids.shape[1] - len(prompt) :], random_tokens(5, seed=9)])[None]
        cache = hhc.HybridPrefixCache(model, store=store)
        follow_up = run(model, turn, torch.ones_like(turn), cache)
        assert torch.equal(follow_up.sequences, run(cold_model, turn, torch.ones_like(turn)).sequences)
        assert cache.num_cached_tokens > len(prompt)


def test_right_padding_is_refused_with_an_explicit_cache(models):
    _, model = models
    input_ids, mask = left_padded(chat_prompts()[:2])
    right_ids, right_mask = input_ids.flip(1), mask.flip(1)
    with pytest.raises(ValueError, match="padding_side = 'left'"):
        model.generate(right_ids, attention_mask=right_mask, past_key_values=hhc.HybridPrefixCache(model), max_new_tokens=2)


def test_auto_mode_serves_batches(models):
    cold_model, model = models
    input_ids, mask = left_padded(chat_prompts())
    store = hhc.PrefixStore(block_size=BLOCK_SIZE)
    hhc.patch(model, auto=True, store=store)
    try:
        first = model.generate(input_ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
        again = model.generate(input_ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
        # Right padding is no batch auto mode serves: generate runs as unpatched.
        right = model.generate(input_ids.flip(1), attention_mask=mask.flip(1), max_new_tokens=2, do_sample=False, pad_token_id=0)
    finally:
        hhc.patch(model, auto=False)
    cold = cold_model.generate(input_ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(first, cold) and torch.equal(again, cold)
    cold_right = cold_model.generate(input_ids.flip(1), attention_mask=mask.flip(1), max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert torch.equal(right, cold_right)
    assert hhc.cached_tokens(input_ids) > 5 * 16


def test_a_store_too_small_for_the_batch_only_serves_less(models):
    """Room for about three blocks: rows evict each other's entries and run out of snapshot slots."""
    cold_model, model = models
    input_ids, mask = left_padded(chat_prompts())
    probe = hhc.PrefixStore(block_size=BLOCK_SIZE)
    hhc.HybridPrefixCache(model, store=probe)  # binds the layout: the sizes of one page and one snapshot
    store = hhc.PrefixStore(block_size=BLOCK_SIZE, max_bytes=3 * (probe.page_bytes + probe.snapshot_bytes))
    cold = run(cold_model, input_ids, mask)
    for _ in range(2):
        output = run(model, input_ids, mask, hhc.HybridPrefixCache(model, store=store))
        assert torch.equal(output.sequences, cold.sequences)
        store.check_invariants()
        assert store.stats()["pinned_blocks"] == 0 and store.stats()["reserved_snapshots"] == 0
        assert store.bytes_used <= store.max_bytes
    assert store.stats()["evictions"] > 0  # the budget was really too small


def test_a_failure_mid_batch_leaves_the_store_consistent(models):
    _, model = models
    input_ids, mask = left_padded(chat_prompts())
    store = hhc.PrefixStore(block_size=BLOCK_SIZE)

    class Interrupt(Exception):
        pass

    def stop_after_three(input_ids, scores, **kwargs):
        if input_ids.shape[1] >= mask.shape[1] + 3:
            raise Interrupt
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    from transformers import StoppingCriteriaList

    with pytest.raises(Interrupt):
        run(model, input_ids, mask, hhc.HybridPrefixCache(model, store=store), stopping_criteria=StoppingCriteriaList([stop_after_three]))
    store.check_invariants()
    assert store.stats()["pinned_blocks"] == 0 and store.stats()["reserved_snapshots"] == 0
    # What the rows published before generating (their prompts) is whole: the same batch hits it.
    cache = hhc.HybridPrefixCache(model, store=store)
    run(model, input_ids, mask, cache, max_new_tokens=1)
    assert all(cached > 0 for cached in cache.cached_tokens_per_row)
