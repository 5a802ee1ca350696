"""Assisted decoding (prompt lookup, assistant models) on a `HybridPrefixCache` and in auto mode, transformers 5.25:
greedy output equals plain greedy (lossless) with the prompt served from the store, the rejected drafts rolled
back on our kernels (`rollback.py`), and nothing of a draft reaching the store. On 5.24, transformers itself
refuses assisted decoding for stateful models."""

import pytest
import torch
from cold_oracle import assert_same_as_cold, cold_generate, generate, random_tokens

import hf_hybrid_cache as hhc
from hf_hybrid_cache import rollback, seams
from hf_hybrid_cache.tiny import tiny_model

pytestmark = pytest.mark.skipif(not seams.ASSISTS_STATEFUL_MODELS, reason="transformers 5.24 refuses assisted decoding for stateful models")

ONE_PASS_FAMILIES = ["qwen3_next", "qwen3_5", "olmo_hybrid", "lfm2", "nemotron_h", "kimi_linear", "jamba"]
MAX_NEW_TOKENS = 24


def edit_prompt(seed: int = 0) -> torch.Tensor:
    """A code-edit-shaped prompt `[1, 106]`: a span appears twice, the second time cut short, so prompt lookup
    drafts its continuation."""
    span = random_tokens(40, seed=seed + 1)
    parts = [random_tokens(50, seed=seed), span, random_tokens(10, seed=seed + 2), span[:6]]
    return torch.cat(parts)[None]


def greedy(model, prompt, cache=None, **kwargs):
    """generate's dict output (sequences, per-step logits), greedy."""
    return generate(model, prompt, cache, max_new_tokens=MAX_NEW_TOKENS, **kwargs)


def plain(cold, prompt):
    """Plain greedy on the unpatched model: what assisted greedy must equal."""
    return cold_generate(cold, prompt, max_new_tokens=MAX_NEW_TOKENS)


@pytest.fixture(scope="module", params=ONE_PASS_FAMILIES)
def models(request):
    """(unpatched, patched) copies of one family's tiny model."""
    return tiny_model(request.param, seed=0), hhc.patch(tiny_model(request.param, seed=0))


@pytest.fixture
def crops(monkeypatch):
    """Every rollback: (tokens removed, length of the forward it undid)."""
    seen = []
    restore = rollback.DraftRollback.restore

    def recording_restore(self, cache, num_tokens_to_remove):
        seen.append((num_tokens_to_remove, self.step_length))
        return restore(self, cache, num_tokens_to_remove)

    monkeypatch.setattr(rollback.DraftRollback, "restore", recording_restore)
    return seen


@pytest.mark.parametrize("mode", ["none", "align", "branch", "all"])
def test_prompt_lookup_equals_plain_greedy_with_the_prompt_served(models, mode, crops):
    cold, model = models
    store = hhc.PrefixStore(block_size=16, mamba_cache_mode=mode)
    first, second = edit_prompt(0), torch.cat([edit_prompt(0)[:, :96], random_tokens(12, seed=7)[None]], dim=1)
    for turn, prompt in enumerate((first, second, first)):
        cache = hhc.HybridPrefixCache(model, store=store)
        assert_same_as_cold(greedy(model, prompt, cache, prompt_lookup_num_tokens=4), plain(cold, prompt))
        assert (cache.num_cached_tokens > 0) == (turn > 0 and mode != "none")
    assert any(removed > 0 for removed, _ in crops) and any(removed == 0 for removed, length in crops if length > 1)
    assert store.stats()["pinned_blocks"] == 0 and store.stats()["reserved_snapshots"] == 0


@pytest.mark.parametrize("assistant_kind", ["same weights", "other weights", "other weights, patched"])
def test_an_assistant_model_equals_plain_greedy(assistant_kind, crops):
    """Same weights: every draft accepted; other weights: drafts rejected at their first token too."""
    cold, model = tiny_model("qwen3_5", seed=0), hhc.patch(tiny_model("qwen3_5", seed=0))
    assistant = tiny_model("qwen3_5", seed=0 if assistant_kind == "same weights" else 3)
    if assistant_kind.endswith("patched"):
        hhc.patch(assistant)
    store = hhc.PrefixStore(block_size=16, mamba_cache_mode="all")
    prompt = edit_prompt(1)
    for turn in range(2):
        cache = hhc.HybridPrefixCache(model, store=store)
        assert_same_as_cold(greedy(model, prompt, cache, assistant_model=assistant), plain(cold, prompt))
        assert (cache.num_cached_tokens > 0) == (turn > 0)
    verified = [(removed, length) for removed, length in crops if length > 1]
    if assistant_kind == "same weights":
        assert verified and all(removed == 0 for removed, _ in verified)
    else:
        assert any(removed == length - 1 for removed, length in verified)  # every draft of a forward rejected


def test_auto_mode_with_prompt_lookup_is_served_and_exact():
    cold, model = tiny_model("qwen3_5", seed=0), hhc.patch(tiny_model("qwen3_5", seed=0), auto=True)
    prompt = edit_prompt(2)
    for turn in range(2):
        assert_same_as_cold(greedy(model, prompt, prompt_lookup_num_tokens=4), plain(cold, prompt))
    assert hhc.get_default_store().stats()["hit_tokens"] > 0


def test_snapshots_of_boundaries_crossed_by_drafts_hold_accepted_states(crops):
    """In mode all every boundary the generated tokens cross is saved, drafts crossing them included: a next
    turn served from those boundaries must equal cold, so each must hold the accepted state, never a draft's."""
    cold, model = tiny_model("qwen3_5", seed=0), hhc.patch(tiny_model("qwen3_5", seed=0))
    store = hhc.PrefixStore(block_size=8, mamba_cache_mode="all")
    prompt = edit_prompt(3)
    out = greedy(model, prompt, hhc.HybridPrefixCache(model, store=store), prompt_lookup_num_tokens=6)
    assert_same_as_cold(out, plain(cold, prompt))
    assert any(removed > 0 for removed, _ in crops)
    out = out.sequences
    next_turn = torch.cat([out, random_tokens(5, seed=9)[None]], dim=1)
    cache = hhc.HybridPrefixCache(model, store=store)
    assert_same_as_cold(greedy(model, next_turn, cache), plain(cold, next_turn))
    assert cache.num_cached_tokens >= (out.shape[1] - 1) // 8 * 8 > prompt.shape[1]


def test_an_interrupt_during_verification_leaves_no_pin_and_no_reserved_snapshot(monkeypatch):
    model = hhc.patch(tiny_model("qwen3_5", seed=0))
    store = hhc.PrefixStore(block_size=16, mamba_cache_mode="all")
    greedy(model, edit_prompt(4), hhc.HybridPrefixCache(model, store=store))  # something to hit
    crop = hhc.HybridPrefixCache.crop

    def interrupted_crop(self, tokens_to_remove):
        crop(self, tokens_to_remove)
        if self.num_seen_tokens > edit_prompt(4).shape[1] + 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(hhc.HybridPrefixCache, "crop", interrupted_crop)
    cache = hhc.HybridPrefixCache(model, store=store)
    with pytest.raises(KeyboardInterrupt):
        greedy(model, edit_prompt(4), cache, prompt_lookup_num_tokens=4)
    stats = store.stats()
    assert stats["hit_tokens"] > 0  # interrupted after its prompt was served
    assert stats["pinned_blocks"] == 0 and stats["reserved_snapshots"] == 0


def test_families_without_an_exact_rollback_are_refused_with_the_reason():
    model = hhc.patch(tiny_model("inkling", seed=0))  # generic path: transformers' own rollback
    with pytest.raises(ValueError, match="generic path.*Run it without a HybridPrefixCache"):
        greedy(model, edit_prompt(0), hhc.HybridPrefixCache(model), prompt_lookup_num_tokens=4)


def test_multi_token_prediction_is_refused_on_a_cache_and_left_to_transformers_in_auto_mode():
    model = hhc.patch(tiny_model("qwen3_5", seed=0))
    with pytest.raises(ValueError, match="use_mtp .* not served on a HybridPrefixCache"):
        model.generate(edit_prompt(), cache=hhc.HybridPrefixCache(model), use_mtp=True, max_new_tokens=4)
    # Auto mode runs it without a cache: transformers' own answer (5.25: the model has no MTP layers), as unpatched.
    auto = hhc.patch(tiny_model("qwen3_5", seed=0), auto=True)
    with pytest.raises(ValueError, match="num_mtp_layers"):
        auto.generate(edit_prompt(), use_mtp=True, max_new_tokens=4)


@pytest.fixture
def exact_unpatched_rollback(monkeypatch):
    """transformers' own assisted decoding made exact: its linear layers keep one more recurrent state than asked
    (`rollback.py` says why one is missing), so that its rollback of a forward whose drafts were all rejected
    returns to the right state. The reference for sampling, whose acceptance rule must stay transformers'."""
    from transformers import cache_utils

    activate = cache_utils.LinearAttentionCacheLayerMixin.activate_past_recording

    def one_more(self, recurrent_states_to_keep=None):
        return activate(self, None if recurrent_states_to_keep is None else recurrent_states_to_keep + 1)

    monkeypatch.setattr(cache_utils.LinearAttentionCacheLayerMixin, "activate_past_recording", one_more)


@pytest.mark.parametrize("draft", ["assistant", "prompt lookup"])
def test_sampling_keeps_transformers_acceptance_rule_seed_for_seed(draft, exact_unpatched_rollback):
    cold, model = tiny_model("qwen3_5", seed=0), hhc.patch(tiny_model("qwen3_5", seed=0))
    kwargs = dict(assistant_model=tiny_model("qwen3_5", seed=3)) if draft == "assistant" else dict(prompt_lookup_num_tokens=4)
    store = hhc.PrefixStore(block_size=16, mamba_cache_mode="all")
    prompt = edit_prompt(5)
    for turn in range(2):
        torch.manual_seed(turn)
        reference = cold.generate(prompt, max_new_tokens=MAX_NEW_TOKENS, do_sample=True, top_k=0, pad_token_id=0, **kwargs)
        torch.manual_seed(turn)
        cache = hhc.HybridPrefixCache(model, store=store)
        ours = model.generate(prompt, max_new_tokens=MAX_NEW_TOKENS, do_sample=True, top_k=0, pad_token_id=0,
                              cache=cache, **kwargs)
        assert torch.equal(ours, reference)
        assert (cache.num_cached_tokens > 0) == (turn > 0)


def test_readme_example_runs(capsys):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "prompt_lookup_num_tokens" in b)
    exec(compile(block, "README.md", "exec"), {})
    cached, equal = capsys.readouterr().out.split()
    assert int(cached) > 0 and equal == "True"
