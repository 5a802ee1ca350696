"""Many sequences per call, patched (auto mode) vs unpatched, side by side in one run:

(a) a GRPO-shaped step: 4 prompts x 8 samples (each prompt repeated 8 times in the batch, as TRL does),
    ~1k-token prompts under a shared system prompt, 32 sampled tokens: prompt tokens computed, wall time;
(b) 8 questions over one ~1.5k-token document in one batch, after a first batch over it: time to first token;
(c) lm-eval 5-shot multiple choice, 100 examples: wall time of `HybridHFLM` vs `HFLM`, and their accuracy
    (and, untimed, `HFLM`'s on the patched model without a store: the same kernels, no caching).

    .venv/bin/python benchmarks/batch.py [--rounds 3] [--dtype float32 bfloat16] [--parts a b c]

Model: Qwen3-Next as in benchmarks/ttft.py (8 layers, hidden 256), random weights. Each part runs both sides
once per round in alternating order; ratios are taken within a round, the median over rounds printed.
Run it on a quiet machine.
"""

import argparse
import contextlib
import io
import json
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import hf_hybrid_cache as hhc
from hf_hybrid_cache.tiny import tiny_byte_tokenizer, tiny_qwen3_next

warnings.filterwarnings("ignore")
logging.getLogger("lm_eval").setLevel(logging.ERROR)
BLOCK_SIZE = 64


def model_pair(dtype):
    unpatched = tiny_qwen3_next(num_hidden_layers=8, hidden_size=256, dtype=dtype)
    patched = hhc.patch(tiny_qwen3_next(num_hidden_layers=8, hidden_size=256, dtype=dtype))
    return unpatched, patched


def tokens(num_tokens: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 300, (num_tokens,), generator=torch.Generator().manual_seed(seed))


def left_padded(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :], mask[row, width - len(prompt) :] = prompt, 1
    return input_ids, mask


class ComputedTokens:
    """Counts the tokens a model embeds while active."""

    def __init__(self, model):
        self.count = 0
        self.handle = model.get_input_embeddings().register_forward_hook(self.hook)

    def hook(self, module, args, output):
        self.count += args[0].numel()

    def close(self):
        self.handle.remove()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def grpo_step(unpatched, patched, rounds: int) -> dict:
    """(a): 4 prompts x 8 rows, sampled; a new store each round (the weights change every training step)."""
    system = tokens(256, seed=1)
    prompts = [torch.cat([system, tokens(768 + 16 * i, seed=10 + i)]) for i in range(4)]
    rows = [prompt for prompt in prompts for _ in range(8)]
    input_ids, mask = left_padded(rows)
    settings = dict(attention_mask=mask, max_new_tokens=32, min_new_tokens=32, do_sample=True, pad_token_id=0)
    ratios, computed, plain_s, ours_s = [], None, [], []
    for round_idx in range(rounds):
        store = hhc.PrefixStore(block_size=BLOCK_SIZE, max_bytes=1 << 31)
        hhc.patch(patched, auto=True, store=store)
        counter = ComputedTokens(patched)
        times = {}
        for side in (("plain", "ours") if round_idx % 2 == 0 else ("ours", "plain")):
            model = unpatched if side == "plain" else patched
            torch.manual_seed(round_idx)
            times[side] = timed(lambda: model.generate(input_ids, **settings))
        counter.close()
        hhc.patch(patched, auto=False)
        computed = counter.count - len(rows) * 32  # minus one token per row per step
        ratios.append(times["ours"] / times["plain"])
        plain_s.append(times["plain"])
        ours_s.append(times["ours"])
    unique = sum(len(prompt) for prompt in prompts)
    return dict(
        prompt_tokens=sum(len(row) for row in rows), unique_tokens=unique, computed=computed,
        bound=unique + len(rows) * BLOCK_SIZE, plain_s=statistics.median(plain_s), ours_s=statistics.median(ours_s),
        ratio=statistics.median(ratios),
    )


def document_questions(unpatched, patched, rounds: int) -> dict:
    """(b): a first batch of 8 questions over the document (warms the store), then 8 new ones: TTFT."""
    document = tokens(1536, seed=2)
    ratios, plain_s, ours_s = [], [], []
    for round_idx in range(rounds):
        store = hhc.PrefixStore(block_size=BLOCK_SIZE, max_bytes=1 << 31)
        hhc.patch(patched, auto=True, store=store)
        first = left_padded([torch.cat([document, tokens(24 + i, seed=100 * round_idx + i)]) for i in range(8)])
        second = left_padded([torch.cat([document, tokens(24 + i, seed=100 * round_idx + 50 + i)]) for i in range(8)])
        patched.generate(first[0], attention_mask=first[1], max_new_tokens=1, do_sample=False, pad_token_id=0)
        times = {}
        for side in (("plain", "ours") if round_idx % 2 == 0 else ("ours", "plain")):
            model = unpatched if side == "plain" else patched
            times[side] = timed(lambda: model.generate(second[0], attention_mask=second[1], max_new_tokens=1, do_sample=False, pad_token_id=0))
        hhc.patch(patched, auto=False)
        ratios.append(times["plain"] / times["ours"])
        plain_s.append(times["plain"])
        ours_s.append(times["ours"])
    return dict(plain_s=statistics.median(plain_s), ours_s=statistics.median(ours_s), speedup=statistics.median(ratios))


CHOICE_TASK = """task: bench_choice
dataset_path: json
dataset_kwargs:
  data_files:
    train: {data}
    test: {data}
test_split: test
fewshot_split: train
fewshot_config:
  sampler: first_n
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def lm_eval_choice(dtype, rounds: int) -> dict:
    """(c): 100 examples, 5 shots, 4 choices each, batch size 4."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from hf_hybrid_cache.lm_eval import HybridHFLM

    folder = Path(tempfile.mkdtemp())
    docs = [
        {"question": f"In the ledger of year {1900 + i}, which entry follows {i * 7 % 97} after the audit of {i}?",
         "choices": [f"entry {i + k}" for k in range(4)], "label": i % 4}
        for i in range(105)
    ]
    (folder / "docs.jsonl").write_text("\n".join(json.dumps(doc) for doc in docs))
    (folder / "choice.yaml").write_text(CHOICE_TASK.format(data=folder / "docs.jsonl"))
    task_manager = TaskManager(include_path=str(folder))
    tokenizer = tiny_byte_tokenizer()

    def run(lm):
        with contextlib.redirect_stderr(io.StringIO()):  # lm-eval's progress bars
            result = lm_eval.simple_evaluate(model=lm, tasks=["bench_choice"], num_fewshot=5, task_manager=task_manager,
                                             limit=100, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                             fewshot_random_seed=0, verbosity="ERROR")
        return result["results"]["bench_choice"]["acc,none"]

    ratios, plain_s, ours_s, accuracies = [], [], [], set()
    for round_idx in range(rounds):
        times = {}
        for side in (("plain", "ours") if round_idx % 2 == 0 else ("ours", "plain")):
            model = tiny_qwen3_next(num_hidden_layers=8, hidden_size=256, dtype=dtype)
            settings = dict(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu", max_length=4096)
            lm = HFLM(**settings) if side == "plain" else HybridHFLM(block_size=BLOCK_SIZE, **settings)
            start = time.perf_counter()
            accuracies.add((side, run(lm)))
            times[side] = time.perf_counter() - start
        ratios.append(times["ours"] / times["plain"])
        plain_s.append(times["plain"])
        ours_s.append(times["ours"])
    # Untimed, once: HFLM on the patched model without a store, the same kernels without caching, which tells
    # a difference from caching apart from one between our kernels and transformers' (bf16).
    patched = hhc.patch(tiny_qwen3_next(num_hidden_layers=8, hidden_size=256, dtype=dtype))
    accuracies.add(("plain on the patched model", run(HFLM(pretrained=patched, tokenizer=tokenizer, batch_size=4,
                                                           device="cpu", max_length=4096))))
    return dict(plain_s=statistics.median(plain_s), ours_s=statistics.median(ours_s), ratio=statistics.median(ratios),
                accuracies=sorted(accuracies))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--parts", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    args = parser.parse_args()
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        unpatched, patched = model_pair(dtype)
        print(f"== {dtype_name}, {args.rounds} rounds (medians)")
        if "a" in args.parts:
            a = grpo_step(unpatched, patched, args.rounds)
            print(f"(a) GRPO step, 4 prompts x 8 rows, 32 new tokens: prompt tokens {a['prompt_tokens']}, unique "
                  f"{a['unique_tokens']}, computed {a['computed']} (target <= {a['bound']}); wall {a['plain_s']:.2f} s "
                  f"unpatched, {a['ours_s']:.2f} s ours: ratio {a['ratio']:.3f} (target <= 0.5)")
        if "b" in args.parts:
            b = document_questions(unpatched, patched, args.rounds)
            print(f"(b) 8 questions over a 1536-token document, second batch: TTFT {b['plain_s']:.2f} s unpatched, "
                  f"{b['ours_s']:.2f} s ours: {b['speedup']:.2f}x (target >= 3)")
        if "c" in args.parts:
            c = lm_eval_choice(dtype, args.rounds)
            print(f"(c) lm-eval 5-shot multiple choice, 100 examples, batch 4: {c['plain_s']:.1f} s HFLM, "
                  f"{c['ours_s']:.1f} s HybridHFLM: ratio {c['ratio']:.3f} (target <= 0.5); acc {c['accuracies']}")


if __name__ == "__main__":
    main()
