"""TRL 1.16's `GRPOTrainer` (transformers generation, local prompts): two steps on a tiny Qwen3.5 patched in
auto mode give the completions, losses and gradients of the unpatched model with the same seed, and each
step's repeated prompts are computed once (hits inside one generate call)."""

import pytest

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

import hf_hybrid_cache as hhc  # noqa: E402
from hf_hybrid_cache.tiny import tiny_byte_tokenizer, tiny_model  # noqa: E402

SYSTEM = "You are a careful assistant who answers in one short line. "
LOGGED = ("loss", "grad_norm", "reward", "entropy")


def train(tmp_path, store: hhc.PrefixStore | None) -> tuple[list[dict], list[str]]:
    """(the logged figures of each step, every completion) of two GRPO steps, patched when `store` is given."""
    model = tiny_model("qwen3_5")
    if store is not None:
        hhc.patch(model, auto=True, store=store)
    tokenizer = tiny_byte_tokenizer()
    tokenizer.padding_side = "left"
    prompts = Dataset.from_dict({"prompt": [SYSTEM + f"Question {i}: what is {i} times {i + 1}?" for i in range(8)]})
    completions_seen = []

    def reward(completions, **kwargs):
        completions_seen.extend(completions)
        return [float(len(completion.encode()) % 5) for completion in completions]

    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, max_completion_length=8,
        max_steps=2, report_to="none", use_cpu=True, seed=0, logging_steps=1, learning_rate=1e-3,
        save_strategy="no", dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    steps = [{name: entry[name] for name in LOGGED} for entry in trainer.state.log_history if "loss" in entry]
    return steps, completions_seen


def test_grpo_steps_equal_unpatched_with_repeated_prompts_computed_once(tmp_path):
    plain_steps, plain_completions = train(tmp_path / "plain", store=None)
    store = hhc.PrefixStore(block_size=16)
    steps, completions = train(tmp_path / "patched", store=store)
    assert len(steps) == 2 and len(completions) == 16
    assert completions == plain_completions
    for step, plain_step in zip(steps, plain_steps, strict=True):
        assert step == pytest.approx(plain_step, rel=1e-4, abs=1e-6)
    stats = store.stats()
    # Each step: 2 prompts x 4 generations; the weights change between steps, so the second step starts cold.
    assert stats["queries"] == 16
    assert stats["hit_tokens"] >= 2 * 2 * 3 * (len(SYSTEM) - 16)
