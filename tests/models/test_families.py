"""Every supported family, cached vs cold: equal greedy tokens and first-step logits within
max(1e-3, 4 x the model's own split-continuation error), over the three modes, a block size that is not a
multiple of 64, shared prefixes of bs-1 / bs / 2bs, an exact repeat and a multi-turn continuation, with
exactly the hits each mode's rules predict."""

import pytest
import torch
from transformers import CONFIG_MAPPING

import hf_hybrid_cache as hhc
from cold_oracle import (
    FIRST_LOGITS_TOLERANCE,
    assert_same_as_cold,
    cold_generate,
    generate,
    random_tokens,
    split_continuation_error,
)
from hf_hybrid_cache.tiny import AUTO_TINY_FAMILIES, TINY_FAMILIES, generating_class_name, tiny_default_model, tiny_model

FAMILIES = ["qwen3_next", *TINY_FAMILIES]
MODES = ["none", "align", "branch", "all"]
BLOCK_SIZE = 40
MAX_NEW_TOKENS = 6
EXPECTED_PATH = {
    **dict.fromkeys(["qwen3_next", "qwen3_5", "qwen3_5_moe", "olmo_hybrid", "qwen3_5_vl", "qwen4_exp", "lfm2", "lfm2_moe",
                     "lfm3", "nemotron_h", "granitemoehybrid", "falcon_h1", "bamba", "zamba2", "nemotron_h_omni",
                     "nemo_speechlm", "kimi_linear", "bailing_hybrid", "glm5_next", "jamba", "lara_mini", "zamba"], "one-pass"),
    **dict.fromkeys(["llama", "qwen3", "mistral", "mistral_sliding", "gemma3_text", "gpt_oss"], "attention-only"),
}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    """(name, cold model, patched model with the same weights, logits tolerance)."""
    name = request.param
    model = hhc.patch(tiny_model(name, seed=0))
    # The patched model's own error when continuing a cache (transformers' Jamba restarts its SSM state on
    # multi-token steps; patched, it continues): what bounds how exactly a cached run can match a cold one.
    tolerance = max(FIRST_LOGITS_TOLERANCE, 4 * split_continuation_error(model))
    return name, tiny_model(name, seed=0), model, tolerance


def every_block_is_a_hit_point(model) -> bool:
    """No state to snapshot (no recurrent layer, no sliding window): K/V pages alone serve a hit."""
    return not hhc.HybridPrefixCache(model, store=hhc.PrefixStore()).layout.state_specs


def expected_hit(model, mode: str, first_len: int, shared_len: int, second_len: int) -> int:
    """The hit a second prompt gets after a first request, by the modes' definitions (README)."""
    usable = min(shared_len, second_len - 1)
    if every_block_is_a_hit_point(model):
        return usable // BLOCK_SIZE * BLOCK_SIZE  # every complete block, whatever the mode
    processed = first_len + MAX_NEW_TOKENS - 1  # the last generated token is never computed
    boundaries = range(BLOCK_SIZE, processed + 1, BLOCK_SIZE)
    past_the_prompt = [b for b in boundaries if b >= first_len]
    if mode == "all":
        saved = set(boundaries)
    elif mode in ("align", "branch"):  # branch: an empty store has no path to leave; the last decode boundary
        saved = set(past_the_prompt[-1:] if mode == "branch" else past_the_prompt)
        saved |= set([b for b in boundaries if b <= first_len - 1][-1:])
    else:
        saved = set()
    return max((b for b in saved if b <= usable), default=0)


def run(model, prompt, store):
    cache = hhc.HybridPrefixCache(model, store=store)
    return generate(model, prompt, cache, max_new_tokens=MAX_NEW_TOKENS), cache


def test_path(family):
    name, _, model, _ = family
    assert model._hf_hybrid_cache_path == EXPECTED_PATH.get(name, "generic")


@pytest.mark.parametrize("mode", MODES)
def test_shared_prefixes(family, mode):
    _, cold, model, tolerance = family
    for shared_len in (BLOCK_SIZE - 1, BLOCK_SIZE, 2 * BLOCK_SIZE):
        store = hhc.PrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode=mode, max_bytes=64 << 20)
        prefix = random_tokens(shared_len, seed=1)
        first = torch.cat([prefix, random_tokens(20, seed=2)])[None]
        tail = random_tokens(20, seed=3)
        tail[0] = (first[0, shared_len] + 1) % 300 + 3  # the prompts part right after the shared prefix
        second = torch.cat([prefix, tail])[None]
        output, cache = run(model, first, store)
        assert_same_as_cold(output, cold_generate(cold, first, max_new_tokens=MAX_NEW_TOKENS), tolerance)
        assert cache.num_cached_tokens == 0
        output, cache = run(model, second, store)
        assert_same_as_cold(output, cold_generate(cold, second, max_new_tokens=MAX_NEW_TOKENS), tolerance)
        expected = expected_hit(model, mode, first.shape[1], shared_len, second.shape[1])
        assert cache.num_cached_tokens == expected, f"shared {shared_len}"
        if mode != "none" and shared_len == 2 * BLOCK_SIZE:
            assert expected > 0  # the test exercises a real hit
        store.check_invariants()


@pytest.mark.parametrize("mode", ["align", "branch", "all"])
def test_exact_repeat_and_next_turn(family, mode):
    """A repeat of a prompt ending on a boundary is served up to the boundary before it; the next turn of
    the chat is served through the boundary reached while generating."""
    _, cold, model, tolerance = family
    store = hhc.PrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode=mode, max_bytes=64 << 20)
    prompt = random_tokens(2 * BLOCK_SIZE, seed=4)[None]
    cold_output = cold_generate(cold, prompt, max_new_tokens=MAX_NEW_TOKENS)
    for expected_cached in (0, BLOCK_SIZE):
        output, cache = run(model, prompt, store)
        assert_same_as_cold(output, cold_output, tolerance)
        assert cache.num_cached_tokens == expected_cached

    turn1 = random_tokens(70, seed=5)[None]
    reply = generate(model, turn1, hhc.HybridPrefixCache(model, store=store), max_new_tokens=30).sequences
    turn2 = torch.cat([reply[0], random_tokens(15, seed=6)])[None]
    output, cache = run(model, turn2, store)
    assert_same_as_cold(output, cold_generate(cold, turn2, max_new_tokens=MAX_NEW_TOKENS), tolerance)
    assert cache.num_cached_tokens == 2 * BLOCK_SIZE  # boundary 80, reached while decoding turn 1
    store.check_invariants()


def test_branch_point_is_saved_and_served(family):
    """Mode branch on both paths: the second prompt sharing a system prompt saves the state where it leaves
    the cached path (the generic path splits its prefill there), and the third hits it."""
    _, cold, model, tolerance = family
    store = hhc.PrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode="branch", max_bytes=64 << 20)
    system = random_tokens(2 * BLOCK_SIZE + 5, seed=20)
    hits = []
    for i in range(3):
        prompt = torch.cat([system, random_tokens(BLOCK_SIZE + 25, seed=21 + i)])[None]
        output, cache = run(model, prompt, store)
        assert_same_as_cold(output, cold_generate(cold, prompt, max_new_tokens=MAX_NEW_TOKENS), tolerance)
        hits.append(cache.num_cached_tokens)
    branch_point = 2 * BLOCK_SIZE
    assert hits == ([0, branch_point, branch_point] if every_block_is_a_hit_point(model) else [0, 0, branch_point])
    store.check_invariants()


def test_jamba_continues_multi_token_steps_from_the_cached_state():
    """transformers' Jamba Mamba layer starts every multi-token step from a zero SSM state. Where the patched layer
    still runs transformers' forward (autograd: these parameters require grad and no `no_grad` is on), the adapter
    makes a prefill continued on a cache equal one forward, and leaves unpatched Jamba models as they were."""
    unpatched = tiny_model("jamba", seed=0)
    before = split_continuation_error(unpatched)
    assert split_continuation_error(hhc.patch(tiny_model("jamba", seed=0))) < 1e-4
    assert split_continuation_error(unpatched) == before


@pytest.mark.parametrize("model_type", [
    pytest.param(name, marks=pytest.mark.skipif(name not in CONFIG_MAPPING, reason=f"{name} came in a later transformers"))
    for name in AUTO_TINY_FAMILIES
])
def test_families_from_their_shrunk_default_configs(model_type):
    """Every other accepted family whose default config shrinks to a tiny one (`tiny_default_config`): a second
    prompt sharing 60 tokens is served 48 (mode all, block 16) and equals cold."""
    cold, model = tiny_default_model(model_type), hhc.patch(tiny_default_model(model_type))
    tolerance = max(FIRST_LOGITS_TOLERANCE, 4 * split_continuation_error(model))
    store = hhc.PrefixStore(block_size=16, mamba_cache_mode="all", max_bytes=64 << 20)
    first = random_tokens(70, seed=1)[None]
    second = torch.cat([first[0, :60], random_tokens(10, seed=5)])[None]
    for prompt, expected_cached in ((first, 0), (second, 48)):
        cache = hhc.HybridPrefixCache(model, store=store)
        output = generate(model, prompt, cache, max_new_tokens=MAX_NEW_TOKENS)
        assert_same_as_cold(output, cold_generate(cold, prompt, max_new_tokens=MAX_NEW_TOKENS), tolerance)
        assert cache.num_cached_tokens == expected_cached
    store.check_invariants()


def test_audio_the_keys_cannot_see_runs_uncached():
    """Inkling's audio comes as tokens of its own (`audio_input_ids`) behind placeholders that are the same for
    every clip: such a request runs uncached (and on transformers' one forward), equal to cold for each clip."""
    cold, model = tiny_model("inkling_mm_model", seed=0), hhc.patch(tiny_model("inkling_mm_model", seed=0))
    ids, num_frames = model.config, 10
    placeholders = torch.tensor([ids.audio_bos_token_id, *[ids.audio_token_id] * num_frames])
    prompt = torch.cat([random_tokens(40, seed=1), placeholders, random_tokens(30, seed=2)])[None]
    store = hhc.PrefixStore(block_size=16, mamba_cache_mode="all", max_bytes=64 << 20)
    for seed in (1, 2):
        clip = torch.randint(0, ids.audio_config.mel_vocab_size, (1, num_frames, ids.audio_config.n_mel_bins),
                             generator=torch.Generator().manual_seed(seed))
        cache = hhc.HybridPrefixCache(model, store=store)
        output = generate(model, prompt, cache, max_new_tokens=MAX_NEW_TOKENS, audio_input_ids=clip)
        assert_same_as_cold(output, generate(cold, prompt, None, max_new_tokens=MAX_NEW_TOKENS, audio_input_ids=clip))
        assert cache.num_cached_tokens == 0
    assert store.stats()["blocks"] == 0


def test_block_diffusion_is_refused_at_patch():
    """DiffusionGemma generates by denoising a canvas, with a generate that takes the uncached tokens only."""
    model = tiny_default_model("diffusion_gemma")
    with pytest.raises(ValueError, match="block diffusion"):
        hhc.patch(model)
    assert not hasattr(model, "_hf_hybrid_cache_patched")


def test_dory_per_loop_is_refused_at_patch_and_last_loop_served():
    """Dory's default per_loop mode adds cache layers in its first forward (a restored hit would lack them);
    last_loop is tested above (`AUTO_TINY_FAMILIES`)."""
    from hf_hybrid_cache.tiny import tiny_default_config

    assert tiny_default_config("dory").recurrent_kv_cache_mode == "last_loop"
    model = tiny_default_model("dory")
    model.config.recurrent_kv_cache_mode = "per_loop"
    with pytest.raises(ValueError, match="recurrent_kv_cache_mode='last_loop'"):
        hhc.patch(model)


@pytest.mark.parametrize("model_type", ["kyutai_speech_to_text", "voxtral_realtime"])
def test_speech_to_text_with_audio_on_every_request_is_refused_at_patch(model_type):
    """Their generate takes audio on every request, which the keys cannot see: refused when patched, not
    found out inside generate (the cache probe needs that audio, or embeddings Kyutai does not have)."""
    import transformers

    with torch.device("meta"):
        model = getattr(transformers, generating_class_name(model_type))(transformers.CONFIG_MAPPING[model_type]())
    with pytest.raises(ValueError, match="audio given on every request"):
        hhc.patch(model)
