"""lm-eval 0.4.13 on local tasks (5-shot, nothing from the hub): `HybridHFLM` gives `HFLM`'s metrics,
generations and loglikelihoods, and serves the few-shot prefix from the store at batch sizes 1 and 4."""

import json

import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from hf_hybrid_cache.lm_eval import HybridHFLM  # noqa: E402
from hf_hybrid_cache.tiny import tiny_byte_tokenizer, tiny_model  # noqa: E402

TASKS = ["tiny_sums_gen", "tiny_sums_choice"]
# The same five shots before every question (`first_n`), as MMLU-style tasks do.
COMMON = """dataset_path: json
dataset_kwargs:
  data_files:
    train: {data}
    test: {data}
test_split: test
fewshot_split: train
fewshot_config:
  sampler: first_n
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
"""
GENERATE_UNTIL = """task: tiny_sums_gen
output_type: generate_until
doc_to_target: " {{answer}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
MULTIPLE_CHOICE = """task: tiny_sums_choice
output_type: multiple_choice
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    docs = [
        {"question": f"What is {a} plus {b}?", "answer": str(a + b), "choices": [str(a + b), str(a * b), str(a + b + 3), str(b)], "label": a % 4}
        for a in range(6) for b in range(4)
    ]
    data = folder / "sums.jsonl"
    data.write_text("\n".join(json.dumps(doc) for doc in docs))
    (folder / "gen.yaml").write_text(COMMON.format(data=data) + GENERATE_UNTIL)
    (folder / "choice.yaml").write_text(COMMON.format(data=data) + MULTIPLE_CHOICE)
    return TaskManager(include_path=str(folder))


def evaluate(lm, task_manager) -> dict:
    return lm_eval.simple_evaluate(
        model=lm, tasks=TASKS, num_fewshot=5, task_manager=task_manager, limit=8, log_samples=True,
        random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
    )


@pytest.mark.parametrize("batch_size", [1, 4])
def test_same_metrics_as_hflm_with_the_shots_served(task_manager, batch_size):
    tokenizer = tiny_byte_tokenizer()
    settings = dict(tokenizer=tokenizer, batch_size=batch_size, device="cpu", max_length=2048)
    plain = evaluate(HFLM(pretrained=tiny_model("qwen3_5"), **settings), task_manager)
    ours_lm = HybridHFLM(pretrained=tiny_model("qwen3_5"), block_size=32, **settings)
    ours = evaluate(ours_lm, task_manager)

    for task in TASKS:
        metrics = {name: value for name, value in plain["results"][task].items() if "," in name}
        assert {name: ours["results"][task][name] for name in metrics} == metrics
    for plain_doc, our_doc in zip(plain["samples"]["tiny_sums_gen"], ours["samples"]["tiny_sums_gen"], strict=True):
        assert our_doc["resps"] == plain_doc["resps"]
    for plain_doc, our_doc in zip(plain["samples"]["tiny_sums_choice"], ours["samples"]["tiny_sums_choice"], strict=True):
        for (plain_choice,), (our_choice,) in zip(plain_doc["resps"], our_doc["resps"], strict=True):
            assert abs(float(our_choice[0]) - float(plain_choice[0])) < 1e-4
            assert our_choice[1] == plain_choice[1]
    stats = ours_lm.prefix_store.stats()
    # 16 requests of ~230 tokens: every one after the first of each task is served the five shots.
    assert stats["queries"] == 16 and stats["hit_tokens"] > 0.6 * stats["query_tokens"]


def test_registered_under_its_model_name():
    from lm_eval.api.registry import get_model

    assert get_model("hf-hybrid-cache") is HybridHFLM


def test_store_and_its_settings_are_exclusive():
    import hf_hybrid_cache as hhc

    with pytest.raises(ValueError, match="either prefix_store or the settings"):
        HybridHFLM(pretrained=tiny_model("qwen3_5"), tokenizer=tiny_byte_tokenizer(), device="cpu",
                   prefix_store=hhc.PrefixStore(), block_size=32)
