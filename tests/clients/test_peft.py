"""peft adapters on a patched tiny Qwen3.5 (LoRA on the attention and GatedDeltaNet projections): every runtime
change of the adapters (disable, switch, several active, scaling, merge, unload, a training step) is keyed, so
no hit crosses it and every output equals the unpatched model with the same adapters; switching back hits.
`patch()` of the `PeftModel` itself serves it; prompt learning is refused at `patch()`."""

import pytest
import torch
from peft import LoraConfig, PromptTuningConfig, get_peft_model
from peft.helpers import rescale_adapter_scale

import hf_hybrid_cache as hhc
from cold_oracle import assert_same_as_cold, generate, random_tokens
from hf_hybrid_cache.tiny import tiny_model

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "in_proj_qkv", "in_proj_z", "in_proj_b", "out_proj"]
PROMPT = random_tokens(100, seed=1)[None]  # block 32: 96 tokens can be served


def lora_model():
    """A tiny Qwen3.5 with two random (non-zero) LoRA adapters, "one" active."""
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    model = get_peft_model(tiny_model("qwen3_5"), config, adapter_name="one")
    model.add_adapter("two", LoraConfig(r=4, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False))
    return model.eval()


@pytest.fixture
def models():
    """(patched PeftModel in auto mode, unpatched PeftModel with the same weights, the store)."""
    cold = lora_model()
    peft_model = lora_model()
    peft_model.load_state_dict(cold.state_dict())
    store = hhc.PrefixStore(block_size=32, mamba_cache_mode="all", max_bytes=64 << 20)
    hhc.patch(peft_model, auto=True, store=store)
    return peft_model, cold, store


def served(peft_model, cold, expected_cached: int | None = None) -> int:
    """Generate on both; outputs must match. Returns the prompt tokens served from the store."""
    output = generate(peft_model, PROMPT, None)
    assert_same_as_cold(output, generate(cold, PROMPT, None))
    cached = hhc.cached_tokens(PROMPT)
    if expected_cached is not None:
        assert cached == expected_cached
    return cached


def test_patching_the_peft_model_itself_caches(models):
    peft_model, cold, store = models
    served(peft_model, cold, 0)
    assert store.stats()["blocks"] > 0
    served(peft_model, cold, 96)


def test_disabled_adapters_never_hit_the_adapters_entries(models):
    peft_model, cold, _ = models
    served(peft_model, cold, 0)
    with peft_model.disable_adapter(), cold.disable_adapter():
        served(peft_model, cold, 0)
        served(peft_model, cold, 96)
    served(peft_model, cold, 96)  # enabled again: the first entries serve


def test_set_adapter_switches_keys_and_back(models):
    peft_model, cold, _ = models
    served(peft_model, cold, 0)
    for model in (peft_model, cold):
        model.set_adapter("two")
    served(peft_model, cold, 0)
    served(peft_model, cold, 96)
    for model in (peft_model, cold):
        model.set_adapter("one")
    served(peft_model, cold, 96)


def test_two_active_adapters_are_their_own_key(models):
    peft_model, cold, _ = models
    served(peft_model, cold, 0)
    for model in (peft_model, cold):
        model.base_model.set_adapter(["one", "two"])
    served(peft_model, cold, 0)
    served(peft_model, cold, 96)


def test_adapter_scaling_is_keyed(models):
    peft_model, cold, _ = models
    served(peft_model, cold, 0)
    with rescale_adapter_scale(peft_model, 0.5), rescale_adapter_scale(cold, 0.5):
        served(peft_model, cold, 0)
    served(peft_model, cold, 96)


@pytest.mark.parametrize("how", ["merge_and_unload", "unload"])
def test_merged_or_unloaded_adapters_are_a_new_model(models, how):
    """Merging changes the base weights, unloading removes the adapters' parameters: either way the model
    fingerprint changes, so the adapter's entries serve neither."""
    peft_model, cold, _ = models
    served(peft_model, cold, 0)
    base, base_cold = getattr(peft_model, how)(), getattr(cold, how)()
    served(base, base_cold, 0)
    served(base, base_cold, 96)


def test_an_optimizer_step_invalidates(models):
    peft_model, cold, _ = models
    served(peft_model, cold, 0)
    for model in (peft_model, cold):
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        model.train()
        loss = model(input_ids=PROMPT, labels=PROMPT).loss
        loss.backward()
        optimizer.step()
        model.eval()
    assert served(peft_model, cold) == 0
    served(peft_model, cold, 96)


def test_per_call_adapter_choice_runs_uncached(models):
    peft_model, cold, store = models
    served(peft_model, cold, 0)
    output = generate(peft_model, PROMPT, None, adapter_names=["two"])
    assert_same_as_cold(output, generate(cold, PROMPT, None, adapter_names=["two"]))
    assert hhc.cached_tokens(PROMPT) is None or hhc.cached_tokens(PROMPT) == 0


def test_prompt_learning_is_refused_at_patch():
    model = get_peft_model(tiny_model("qwen3_5"), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with pytest.raises(ValueError, match="virtual tokens"):
        hhc.patch(model)


def test_a_compiled_model_is_served_through_the_original():
    model = tiny_model("qwen3_5")
    compiled = hhc.patch(torch.compile(model), auto=True)
    assert getattr(model, "_hf_hybrid_cache_patched", False)
    generate(compiled, PROMPT, None)
    generate(compiled, PROMPT, None)
    assert hhc.cached_tokens(PROMPT) == 64  # the default store: block 64
