"""Prompt lookup on a code-edit-shaped workload: tokens/s and acceptance of plain greedy, unpatched transformers'
prompt lookup, ours with prompt lookup, and ours with prompt lookup after a prefix hit, side by side in one run.

    .venv/bin/python benchmarks/assisted.py [--rounds 5] [--new-tokens 128] [--draft-tokens 10]

The workload: a prompt holding a "file" and then the start of that file again, as an edit request does; the
reply repeats the file. A random model does not copy, so the model here is a tiny Qwen3.5 (hidden 256) made to
depend on its last few tokens only (attention outputs zeroed, GatedDeltaNet states forgetting at every token):
its reply to the restated start is the file's own continuation, which prompt lookup finds in the prompt. The
file is that model's own greedy text. Needs transformers 5.25 (5.24 refuses assisted decoding for hybrids).
Each variant runs once per round in a rotated order; medians over rounds are printed. Run it on a quiet machine.
"""

import argparse
import statistics
import time
import warnings

import torch
from transformers import DynamicCache
from transformers.generation import candidate_generator

import hf_hybrid_cache as hhc
from hf_hybrid_cache import seams
from hf_hybrid_cache.tiny import tiny_model

warnings.filterwarnings("ignore")


def copying_model(seed: int = 0):
    """A tiny Qwen3.5 whose next token depends on its last conv-width tokens only."""
    model = tiny_model("qwen3_5", seed=seed, hidden_size=256, intermediate_size=512)
    with torch.no_grad():
        for layer in model.model.layers:
            if hasattr(layer, "self_attn"):
                layer.self_attn.o_proj.weight.zero_()
            else:  # decay exp(-exp(A_log) * softplus(a + dt_bias)) ~ 0: the state keeps the last token only
                layer.linear_attn.A_log.fill_(6.0)
                layer.linear_attn.dt_bias.fill_(6.0)
    return model


class DraftCounter:
    """Tokens drafted and accepted by transformers' prompt-lookup candidate generator (any model, any cache)."""

    def __init__(self):
        self.drafted = self.accepted = 0
        generator = candidate_generator.PromptLookupCandidateGenerator
        get_candidates, update = generator.get_candidates, generator.update_candidate_strategy

        def counting_get_candidates(gen, input_ids, *args, **kwargs):
            candidates, logits = get_candidates(gen, input_ids, *args, **kwargs)
            self.drafted += candidates.shape[1] - input_ids.shape[1]
            return candidates, logits

        def counting_update(gen, input_ids, scores, num_matches):
            self.accepted += int(num_matches)
            return update(gen, input_ids, scores, num_matches)

        generator.get_candidates, generator.update_candidate_strategy = counting_get_candidates, counting_update

    def take(self) -> float | None:
        rate = self.accepted / self.drafted if self.drafted else None
        self.drafted = self.accepted = 0
        return rate


def workload(model, seed: int = 0) -> tuple[torch.Tensor, int]:
    """`[1, n]`: a system prompt, a file (the model's own greedy text), an instruction, the file's first 64 tokens;
    and where the instruction starts (what an earlier request on the same file shares with this one)."""
    generator = torch.Generator().manual_seed(seed)
    system = torch.randint(3, 300, (1, 128), generator=generator)
    start = torch.randint(3, 300, (1, 16), generator=generator)
    file = model.generate(start, max_new_tokens=320, min_new_tokens=320, do_sample=False, pad_token_id=0)
    instruction = torch.randint(3, 300, (1, 16), generator=generator)
    return torch.cat([system, file, instruction, file[:, :64]], dim=1), system.shape[1] + file.shape[1]


def run(model, prompt, new_tokens: int, cache=None, **kwargs) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), cache=cache, max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, **kwargs)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--draft-tokens", type=int, default=10)
    args = parser.parse_args()
    if not seams.ASSISTS_STATEFUL_MODELS:
        raise SystemExit(f"transformers {seams.INSTALLED} refuses assisted decoding for hybrid models: use 5.25")
    cold, patched = copying_model(), hhc.patch(copying_model())
    prompt, shared = workload(cold)
    lookup = dict(prompt_lookup_num_tokens=args.draft_tokens)
    counter = DraftCounter()
    warm_store = hhc.PrefixStore(block_size=64, mamba_cache_mode="branch")
    # The hit: an earlier request with the same system prompt and file (the store then holds them).
    run(patched, prompt[:, : shared + 8], 1, cache=hhc.HybridPrefixCache(patched, store=warm_store))

    variants = {
        "plain greedy (unpatched)": lambda: run(cold, prompt, args.new_tokens, cache=DynamicCache(config=cold.config)),
        "prompt lookup, unpatched 5.25": lambda: run(cold, prompt, args.new_tokens, cache=DynamicCache(config=cold.config), **lookup),
        "prompt lookup, ours": lambda: run(patched, prompt, args.new_tokens, cache=hhc.HybridPrefixCache(patched, store=hhc.PrefixStore(block_size=64)), **lookup),
        "prompt lookup, ours after a prefix hit": lambda: run(patched, prompt, args.new_tokens, cache=hhc.HybridPrefixCache(patched, store=warm_store), **lookup),
    }
    for variant in variants.values():  # warm-up
        variant()
        counter.take()
    times = {name: [] for name in variants}
    rates, outputs = {}, {}
    names = list(variants)
    for round_idx in range(args.rounds):
        for name in names[round_idx % len(names):] + names[: round_idx % len(names)]:
            seconds, outputs[name] = variants[name]()
            times[name].append(seconds)
            rates[name] = counter.take()
    reference = outputs["plain greedy (unpatched)"]
    plain_s = statistics.median(times["plain greedy (unpatched)"])
    print(f"prompt {prompt.shape[1]} tokens, {args.new_tokens} new tokens, up to {args.draft_tokens} drafted per step, "
          f"median of {args.rounds} rounds (transformers {seams.INSTALLED}, {torch.get_num_threads()} threads)\n")
    print(f"| variant | tokens/s | vs plain greedy | drafts accepted | equals plain greedy |")
    print("|---|---|---|---|---|")
    for name in names:
        seconds = statistics.median(times[name])
        rate = "n/a" if rates[name] is None else f"{rates[name]:.0%}"
        print(f"| {name} | {args.new_tokens / seconds:.1f} | {plain_s / seconds:.2f}x | {rate} | "
              f"{'yes' if torch.equal(outputs[name], reference) else 'NO'} |")


if __name__ == "__main__":
    main()
