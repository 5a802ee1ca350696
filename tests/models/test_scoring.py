"""`hhc.score`: logits from a position on, the prefix before it served from the store, equal to a cold
forward; sequences sharing a prefix in one call compute it once; bad input is refused with the fix."""

import pytest
import torch

import hf_hybrid_cache as hhc
from cold_oracle import FIRST_LOGITS_TOLERANCE, random_tokens
from hf_hybrid_cache.tiny import tiny_model

FAMILIES = ["qwen3_next", "nemotron_h", "gemma3_text", "llama"]


@pytest.fixture(scope="module", params=FAMILIES)
def models(request):
    return tiny_model(request.param), hhc.patch(tiny_model(request.param))


def few_shot_requests() -> tuple[list[torch.Tensor], list[int]]:
    """3 questions after 70 tokens of shots, 3 continuations each: (sequences, first scored position)."""
    shots = random_tokens(70, seed=1)
    sequences, firsts = [], []
    for question in range(3):
        context = torch.cat([shots, random_tokens(9, seed=10 + question)])
        for choice in range(3):
            sequences.append(torch.cat([context, random_tokens(3 + choice, seed=20 + choice)]))
            firsts.append(len(context) - 1)
    return sequences, firsts


@pytest.mark.parametrize("mode", ["align", "branch", "all"])
def test_scores_equal_a_cold_forward_and_reuse_the_shots(models, mode):
    cold_model, model = models
    sequences, firsts = few_shot_requests()
    store = hhc.PrefixStore(block_size=16, mamba_cache_mode=mode)
    for round_idx in range(2):
        before = store.stats()["hit_tokens"]
        scores = hhc.score(model, sequences, firsts, store=store)
        for tokens, first, logits in zip(sequences, firsts, scores):
            expected = cold_model(tokens[None]).logits[0, first:]
            assert logits.shape == expected.shape
            assert (logits - expected).abs().max() < FIRST_LOGITS_TOLERANCE
        served = store.stats()["hit_tokens"] - before
        # The shots' last boundary (64) is saved by the first sequence for the others in the first call; in
        # the second, every sequence is served up to its context's last boundary (64 again, of 78).
        assert served == (len(sequences) - 1) * 64 if round_idx == 0 else len(sequences) * 64
    assert store.stats()["pinned_blocks"] == 0 and store.stats()["reserved_snapshots"] == 0


def test_generate_after_scoring_hits_the_context(models):
    cold_model, model = models
    sequences, firsts = few_shot_requests()
    store = hhc.PrefixStore(block_size=16)
    hhc.score(model, sequences[:2], firsts[:2], store=store)  # two choices: their common context is published
    prompt = sequences[0][: firsts[0] + 1][None]
    cache = hhc.HybridPrefixCache(model, store=store)
    output = model.generate(prompt, past_key_values=cache, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(output, cold_model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0))
    assert cache.num_cached_tokens == 64


@pytest.mark.parametrize(
    "sequences, firsts, error, message",
    [
        ([torch.arange(3, 10)], [0, 1], ValueError, "1 sequences but 2 logits_from"),
        ([torch.arange(3, 10)[None]], [0], TypeError, "1-D tensor of token ids"),
        ([torch.arange(3, 10).float()], [0], TypeError, "1-D tensor of token ids"),
        ([torch.arange(3, 10)], [7], ValueError, r"logits_from must be an int in \[0, 6\]"),
        ([torch.arange(3, 10)], [-1], ValueError, r"logits_from must be an int in \[0, 6\]"),
    ],
    ids=["counts", "2d", "float", "past-the-end", "negative"],
)
def test_bad_input(model, sequences, firsts, error, message):
    with pytest.raises(error, match=message):
        hhc.score(model, sequences, firsts)
