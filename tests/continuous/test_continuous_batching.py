"""transformers' continuous batching on patched hybrid models (`hf_hybrid_cache/continuous/`): every request's
greedy tokens equal a cold `generate` of its prompt alone on an unpatched copy, across packing, chunked
prefill, waiting for a state slot, forks and cancellation; prefix caching hits exactly where the mode saves
states; the cache stays within its byte budget; what cannot run is refused with the alternative named."""

import re

import pytest
import torch

import hf_hybrid_cache as hhc
from hf_hybrid_cache import seams
from batching_support import Session, cold_tokens, config, greedy, prompts_sharing, store
from cold_oracle import random_tokens
from hf_hybrid_cache.tiny import tiny_model

# Kimi-Linear and Bailing: KDA beside latent attention, which transformers' engine pages from 5.25 on.
LATENT_ATTENTION = pytest.mark.skipif(not seams.CB_PAGES_LATENT_ATTENTION, reason="5.24's engine does not page MLA")
ONE_PASS_FAMILIES = ["qwen3_5", "qwen3_5_moe", "qwen3_next", "olmo_hybrid", "qwen3_5_vl", "lfm2", "lfm2_moe", "lfm3",
                     "nemotron_h", "granitemoehybrid", "bamba", "falcon_h1", "zamba2", "jamba", "zamba",
                     pytest.param("kimi_linear", marks=LATENT_ATTENTION), pytest.param("bailing_hybrid", marks=LATENT_ATTENTION)]


@pytest.fixture(scope="module")
def qwen3_5():
    return tiny_model("qwen3_5", seed=0), hhc.patch(tiny_model("qwen3_5", seed=0))


@pytest.fixture(scope="module", params=["qwen3_5", "lfm2", "nemotron_h", "falcon_h1", "jamba",
                                        pytest.param("kimi_linear", marks=LATENT_ATTENTION)],
                ids=["gated-delta-net", "short-conv", "mamba2", "mamba2-beside-attention", "mamba",
                     "kda-beside-latent-attention"])
def layer_kinds(request):
    """(cold, patched) models of each recurrent layer kind continuous batching runs."""
    return tiny_model(request.param, seed=0), hhc.patch(tiny_model(request.param, seed=0))


@pytest.mark.parametrize("family", ONE_PASS_FAMILIES)
def test_generate_batch_equals_cold_generate(family):
    cold, model = tiny_model(family, seed=0), hhc.patch(tiny_model(family, seed=0))
    prompts = prompts_sharing(40, [3, 30, 1, 45])
    outputs = model.generate_batch(prompts, generation_config=greedy(), continuous_batching_config=config(),
                                   progress_bar=False)
    assert len(outputs) == len(prompts)
    for output in outputs.values():
        assert output.generated_tokens == cold_tokens(cold, output.prompt_ids), output.request_id


def test_transformers_refuses_the_unpatched_model():
    """What the seams change: the same model unpatched is refused by transformers itself."""
    with pytest.raises(ValueError, match="Invalid layer type: linear_attention"):
        tiny_model("qwen3_5", seed=0).generate_batch([[5, 6, 7]], generation_config=greedy(), progress_bar=False)


@pytest.mark.parametrize("mode, expected_hits", [("none", 0), ("align", 64), ("all", 64)])
def test_a_later_request_starts_from_the_shared_prefix(layer_kinds, mode, expected_hits):
    """First request 75 tokens, then three sharing its first 70: K/V blocks match up to 64 and the state
    snapshot at 64 exists in modes align (last boundary before the final prompt token) and all."""
    cold, model = layer_kinds
    first, *others = prompts_sharing(70, [5, 30, 17, 41])
    session = Session(model, mode=mode)
    try:
        outputs = session.run([first]) + session.run(others)
        for prompt, output in zip([first, *others], outputs):
            assert output.generated_tokens == cold_tokens(cold, prompt)
        served = [session.cache.cached_tokens.get(output.request_id, 0) for output in outputs]
        assert served == [0] + [expected_hits] * 3
        assert session.cache.slots.num_free == session.cache.slots.num_slots
    finally:
        session.close()


@pytest.mark.parametrize("mode, expected_hits", [("none", 0), ("align", 64), ("branch", 64)])
def test_requests_arriving_together_compute_their_shared_prefix_once(layer_kinds, mode, expected_hits):
    """Four prompts sharing 70 tokens sent at once: the first computes them and saves the boundary where the
    prompts part (64; align alone would save only 96, its last before its final token); the others wait
    for it and are served 64 (in mode none, nothing is saved: all compute everything)."""
    cold, model = layer_kinds
    prompts = prompts_sharing(70, [30, 40, 35, 50], seed=18)
    session = Session(model, mode=mode)
    try:
        outputs = session.run(prompts)
        for prompt, output in zip(prompts, outputs):
            assert output.generated_tokens == cold_tokens(cold, prompt)
        served = [session.cache.cached_tokens.get(output.request_id, 0) for output in outputs]
        assert served == [0] + [expected_hits] * 3
    finally:
        session.close()


def test_the_next_turn_hits_a_boundary_reached_while_decoding(qwen3_5):
    """Mode align saves the boundaries past the prompt: turn 2 (turn 1 + its reply + more) is served 48 of
    turn 1's 34 + 20 generated tokens."""
    cold, model = qwen3_5
    session = Session(model, generation_config=greedy(20))
    try:
        turn1 = random_tokens(34, seed=3).tolist()
        reply = session.run([turn1])[0].generated_tokens
        turn2 = turn1 + reply + random_tokens(9, seed=4).tolist()
        output = session.run([turn2])[0]
        assert output.generated_tokens == cold_tokens(cold, turn2, max_new_tokens=20)
        assert session.cache.cached_tokens[output.request_id] == 48
    finally:
        session.close()


def test_a_forward_reserves_no_more_snapshots_than_the_store_holds(qwen3_5):
    """Mode all, a store with room for 6 pages and 2 snapshots: a 100-token prompt keeps its two deepest
    boundaries (80, 96), and a prompt sharing 97 tokens is served 96."""
    cold, model = qwen3_5
    probe = store("all")
    hhc.HybridPrefixCache(model, store=probe)  # binds it: its page and snapshot sizes
    first = random_tokens(100, seed=16).tolist()
    second = first[:97] + random_tokens(6, seed=17).tolist()
    session = Session(model, store=store("all", max_bytes=6 * probe.page_bytes + 2 * probe.snapshot_bytes))
    try:
        outputs = session.run([first]) + session.run([second])
        for prompt, output in zip((first, second), outputs):
            assert output.generated_tokens == cold_tokens(cold, prompt)
        stats = session.store.stats()
        assert (stats["blocks"], stats["snapshots"], stats["reserved_snapshots"]) == (6, 2, 0)
        assert session.cache.cached_tokens[outputs[1].request_id] == 96
        session.store.check_invariants()
    finally:
        session.close()


def test_chunked_prefill_and_waiting_for_a_slot(qwen3_5):
    """32 tokens per forward (prompts split over several) and 2 slots for 5 requests: each continues its own
    state across chunks, the others wait for a slot, and all equal cold."""
    cold, model = qwen3_5
    prompts = prompts_sharing(20, [50, 3, 70, 12, 33], seed=7)
    session = Session(model, max_batch_tokens=32, max_requests=2)
    try:
        for prompt, output in zip(prompts, session.run(prompts)):
            assert output.generated_tokens == cold_tokens(cold, prompt)
        assert session.cache.slots.num_free == 2
    finally:
        session.close()


def test_samples_fork_the_parent_state(qwen3_5):
    """num_return_sequences: transformers forks a request after its prompt; each child gets a slot holding
    the parent's state (sampling with top_k=1, so every child equals greedy cold)."""
    cold, model = qwen3_5
    prompt = random_tokens(40, seed=9).tolist()
    outputs = model.generate_batch([prompt], generation_config=greedy(num_return_sequences=3, do_sample=True, top_k=1),
                                   continuous_batching_config=config(), progress_bar=False)
    assert len(outputs) == 3
    for output in outputs.values():
        assert output.generated_tokens == cold_tokens(cold, prompt)


def test_a_cancelled_request_frees_its_slot_and_leaves_the_others_correct(qwen3_5):
    cold, model = qwen3_5
    prompts = prompts_sharing(30, [10, 20, 5], seed=11)
    session = Session(model)
    try:
        cancelled = session.manager.add_request(prompts[0], max_new_tokens=200, streaming=True)
        ids = [session.manager.add_request(prompt) for prompt in prompts[1:]]

        def cancel_after_three_tokens(output):
            if output.request_id == cancelled and len(output.generated_tokens) == 3:
                session.manager.cancel_request(cancelled)

        results = session.collect(ids, on_partial=cancel_after_three_tokens)
        for request_id, prompt in zip(ids, prompts[1:]):
            assert results[request_id].generated_tokens == cold_tokens(cold, prompt)
        assert session.run([prompts[0]])[0].generated_tokens == cold_tokens(cold, prompts[0])
        assert session.cache.slots.num_free == session.cache.slots.num_slots
    finally:
        session.close()


def test_a_request_longer_than_the_cache_is_refused_and_the_engine_runs_on(qwen3_5):
    """transformers would queue it and stop its loop ("No requests can be scheduled"), failing the others."""
    cold, model = qwen3_5
    session = Session(model, max_bytes=2 << 20, max_requests=2)
    try:
        prompt = random_tokens(40, seed=15).tolist()
        running = session.manager.add_request(prompt)
        with pytest.raises(ValueError, match=r"needs 5008 cached tokens; this continuous batching cache holds (\d+):") as refusal:
            session.manager.add_request([5] * 5000)
        assert session.collect([running])[running].generated_tokens == cold_tokens(cold, prompt)
        # What it says the cache holds is what transformers allocated: tokens of K/V one request can use.
        allocators = session.cache.cache_allocators.values()
        capacity = min(allocator.num_blocks * allocator.tokens_per_page for allocator in allocators)
        held = int(re.search(r"holds (\d+):", str(refusal.value)).group(1))
        assert held == capacity and 0 < capacity < 5008
    finally:
        session.close()


def test_a_failing_forward_leaves_no_snapshot_and_no_slot(qwen3_5, monkeypatch):
    """A forward that raises half-way (after some recurrent layers wrote states) fails its requests; nothing of
    it reaches the store (no block, no snapshot, no reserved slot) and their slots are free."""
    from hf_hybrid_cache.models.gated_delta_net import PrefixGatedDeltaNet

    cold, model = qwen3_5
    last_linear = max(m.layer_idx for m in model.modules() if isinstance(m, PrefixGatedDeltaNet))
    original, calls = PrefixGatedDeltaNet._forward_packed, []

    def failing_once(self, hidden_states, cache):
        if self.layer_idx == last_linear and not calls:
            calls.append(1)
            raise RuntimeError("injected")
        return original(self, hidden_states, cache)

    monkeypatch.setattr(PrefixGatedDeltaNet, "_forward_packed", failing_once)
    session = Session(model, mode="all")
    try:
        failed = session.run(prompts_sharing(40, [8], seed=13))[0]
        assert failed.error is not None and "injected" in failed.error
        stats = session.store.stats()
        assert (stats["blocks"], stats["snapshots"], stats["reserved_snapshots"]) == (0, 0, 0)
        assert session.cache.slots.num_free == session.cache.slots.num_slots
    finally:
        session.close()  # transformers ends its loop on an error in a forward: a new manager serves the next
    session = Session(model, store=session.store)
    try:
        prompt = random_tokens(50, seed=14).tolist()
        assert session.run([prompt])[0].generated_tokens == cold_tokens(cold, prompt)
        assert session.store.stats()["snapshots"] == 3
    finally:
        session.close()


def test_attention_reads_kv_heads_unrepeated_in_our_batches_only(qwen3_5, monkeypatch):
    """On CPU, transformers' packed SDPA repeats every request's K/V heads for grouped-query attention; in our
    batches SDPA reads them as they are (`enable_gqa`), and any other call is transformers' as before."""
    cold, model = qwen3_5
    assert model.config.num_attention_heads > model.config.num_key_value_heads
    calls, sdpa = [], torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *args, **kwargs: calls.append(kwargs.get("enable_gqa", False)) or sdpa(*args, **kwargs))
    prompts = prompts_sharing(20, [5, 9])
    outputs = model.generate_batch(prompts, generation_config=greedy(), continuous_batching_config=config(),
                                   progress_bar=False)
    assert calls and all(calls)
    for output in outputs.values():
        assert output.generated_tokens == cold_tokens(cold, output.prompt_ids)
    calls.clear()  # a padded batch outside continuous batching: transformers repeats the heads itself
    cold.generate(torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]]), attention_mask=torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]),
                  max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert calls and not any(calls)


def test_the_cache_is_sized_from_the_byte_budget(qwen3_5):
    _, model = qwen3_5
    budget = 8 << 20
    session = Session(model, max_bytes=budget, max_requests=4, max_batch_tokens=64)
    try:
        session.run([[5, 6, 7]])  # the cache is built by the first batch
        cache = session.cache
        slots = sum(p.nbytes for pools in (cache.slots.conv, cache.slots.recurrent) for p in pools.values())
        masks = 64 * (cache.max_tokens_read + 64) * model.dtype.itemsize
        assert cache.cache_tensor.nbytes + slots + masks <= budget
        assert cache.cache_tensor.nbytes + slots + masks > budget * 0.8  # the budget is used
        assert cache.slots.num_slots == 4
    finally:
        session.close()
    with pytest.raises(ValueError, match="raise max_bytes"):
        model.init_continuous_batching(generation_config=greedy(), continuous_batching_config=config(max_bytes=1 << 16))


@pytest.mark.parametrize("family, overrides, reason", [
    ("inkling", {}, "generic path"),
    ("qwen4_exp", {}, "indexed_attention"),
    ("lfm3", dict(layer_types=["conv", "sliding_attention", "full_attention", "conv"], sliding_window=24),
     "full_attention and sliding_attention"),
    ("kimi_linear", {}, "latent attention \\(MLA\\) layers.*from release 5.25 on"),
])
def test_what_cannot_run_is_refused_naming_generate(family, overrides, reason):
    if family == "kimi_linear" and seams.CB_PAGES_LATENT_ATTENTION:
        pytest.skip("transformers 5.25 pages latent attention")
    model = hhc.patch(tiny_model(family, seed=0, **overrides))
    with pytest.raises(ValueError, match=f"{reason}.*use model.generate\\(\\)"):
        model.generate_batch([[5, 6, 7]], generation_config=greedy(), progress_bar=False)


def test_bad_settings_name_the_fix():
    with pytest.raises(ValueError, match="max_requests must be at least 1"):
        hhc.HybridBatchingConfig(max_requests=0)
    with pytest.raises(TypeError, match="store must be a PrefixStore or None, got str"):
        hhc.HybridBatchingConfig(store="redis://localhost")


def test_a_page_size_other_than_the_store_block_size_is_refused(qwen3_5):
    _, model = qwen3_5
    with pytest.raises(ValueError, match=r"page_size=32 differs from the prefix store's block_size=16.*PrefixStore\(block_size=32\)"):
        model.init_continuous_batching(generation_config=greedy(), continuous_batching_config=config(page_size=32))
