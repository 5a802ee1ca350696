"""Time to first token and decode speed: cold DynamicCache, transformers' deepcopy recipe, and the prefix store
at 0 %, 50 % and 87.5 % of the prompt cached, side by side in one run; a cold run on the uncached eighth
alone, the floor a hit approaches; and a prefilled cache handed to generate as it is (no copy, prefill not
timed), which computes what a hit computes: the two split a hit's cost over that floor into attention over
the cached keys and our lookup and restore.

    .venv/bin/python benchmarks/ttft.py [--rounds 21] [--prompt-len 2048] [--block-size 256]

Every variant runs once per round, in an order rotated each round; ratios are taken within a round and
the median over rounds is printed (shared/NOTES.md, "Measuring"). Run it on a quiet machine.
"""

import argparse
import copy
import statistics
import time
import warnings

import torch
from transformers import DynamicCache
from transformers.generation.streamers import BaseStreamer

import hf_hybrid_cache as hhc
from hf_hybrid_cache.tiny import tiny_qwen3_next

warnings.filterwarnings("ignore")


class TokenClock(BaseStreamer):
    """Timestamps of the tokens generate streams (the first put is the prompt, then one per token)."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def timed_generate(model, input_ids, make_cache, max_new_tokens):
    """Returns (ttft_s, decode_s_per_token, total_s); making the cache is part of the time."""
    clock = TokenClock()
    start = time.perf_counter()
    model.generate(
        input_ids,
        cache=make_cache(),
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        do_sample=False,
        streamer=clock,
    )
    total = time.perf_counter() - start
    token_times = clock.times[1:]
    decode = (token_times[-1] - token_times[0]) / (len(token_times) - 1) if len(token_times) > 1 else float("nan")
    return token_times[0] - start, decode, total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21, help="paired rounds; the ratios near their bounds need about 20")
    parser.add_argument("--prompt-len", type=int, default=2048)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--mode", default="align", choices=["align", "all"])
    parser.add_argument("--new-tokens", type=int, default=33, help="tokens generated per call (decode speed)")
    args = parser.parse_args()

    unpatched = tiny_qwen3_next(num_hidden_layers=8, hidden_size=256)
    patched = hhc.patch(tiny_qwen3_next(num_hidden_layers=8, hidden_size=256))
    prompt = torch.randint(3, 300, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    recipe_len = args.prompt_len * 7 // 8
    budget = 1 << 30

    def prefix_store(cached_fraction):
        """A fresh store holding a snapshot at `cached_fraction` of the prompt (warmed, untimed)."""
        store = hhc.PrefixStore(block_size=args.block_size, mamba_cache_mode=args.mode, max_bytes=budget)
        cached = int(args.prompt_len * cached_fraction) // args.block_size * args.block_size
        if cached:
            # One token past the boundary, so align mode saves the state exactly there.
            warm = torch.cat([prompt[:, :cached], torch.full((1, 1), 3)], dim=1)
            patched.generate(warm, cache=hhc.HybridPrefixCache(patched, store=store), max_new_tokens=1)
        return store

    def recipe_cache(model):
        prefilled = DynamicCache(config=model.config)
        with torch.no_grad():
            model(prompt[:, :recipe_len], cache=prefilled)
        return prefilled

    recipe_prefilled = {"unpatched": recipe_cache(unpatched), "patched": recipe_cache(patched)}

    def run_ours(fraction):
        store = prefix_store(fraction)
        caches = []

        def make_cache():
            caches.append(hhc.HybridPrefixCache(patched, store=store))
            return caches[0]

        result = timed_generate(patched, prompt, make_cache, args.new_tokens)
        cache = caches[0]
        expected = int(args.prompt_len * fraction) // args.block_size * args.block_size
        if cache.num_cached_tokens != expected:
            raise RuntimeError(f"expected {expected} cached tokens, got {cache.num_cached_tokens}")
        return result

    def run_prefilled():
        """The same forward as a hit, minus our lookup and restore (the prefill is not timed): what attention
        over the cached keys costs."""
        prefilled = recipe_cache(patched)
        return timed_generate(patched, prompt, lambda: prefilled, args.new_tokens)

    variants = {
        "cold DynamicCache, unpatched model": lambda: timed_generate(
            unpatched, prompt, lambda: DynamicCache(config=unpatched.config), args.new_tokens
        ),
        "cold DynamicCache, patched model": lambda: timed_generate(
            patched, prompt, lambda: DynamicCache(config=patched.config), args.new_tokens
        ),
        "deepcopy recipe 87.5 %, unpatched": lambda: timed_generate(
            unpatched, prompt, lambda: copy.deepcopy(recipe_prefilled["unpatched"]), args.new_tokens
        ),
        "deepcopy recipe 87.5 %, patched": lambda: timed_generate(
            patched, prompt, lambda: copy.deepcopy(recipe_prefilled["patched"]), args.new_tokens
        ),
        "prefilled cache 87.5 %, no copy, patched": run_prefilled,
        "HybridPrefixCache 0 % cached": lambda: run_ours(0.0),
        "HybridPrefixCache 50 % cached": lambda: run_ours(0.5),
        "HybridPrefixCache 87.5 % cached": lambda: run_ours(0.875),
        "cold, the last 12.5 % alone, patched": lambda: timed_generate(
            patched, prompt[:, recipe_len:], lambda: DynamicCache(config=patched.config), args.new_tokens
        ),
    }
    names = list(variants)
    for name in names:  # warm-up: lazy imports, allocator
        variants[name]()

    results = {name: [] for name in names}
    for round_idx in range(args.rounds):
        order = names[round_idx % len(names) :] + names[: round_idx % len(names)]
        for name in order:
            results[name].append(variants[name]())

    def median(name, field):
        return statistics.median(r[field] for r in results[name])

    def paired(a, b, field):
        """Median over rounds of a/b, for one field (0: ttft, 1: decode, 2: total)."""
        return statistics.median(x[field] / y[field] for x, y in zip(results[a], results[b]))

    cold_u, cold_p = names[0], names[1]
    print(
        f"\nprompt {args.prompt_len} tokens, block {args.block_size}, mode {args.mode}, "
        f"{args.new_tokens} new tokens, {args.rounds} rounds, torch threads {torch.get_num_threads()}\n"
    )
    print(f"{'variant':38s} {'TTFT ms':>9s} {'x vs cold(unp)':>15s} {'x vs cold(pat)':>15s} {'decode ms/tok':>14s}")
    for name in names:
        print(
            f"{name:38s} {1000 * median(name, 0):9.1f} {paired(cold_u, name, 0):15.2f} "
            f"{paired(cold_p, name, 0):15.2f} {1000 * median(name, 1):14.2f}"
        )
    ours_full, ours_none = "HybridPrefixCache 87.5 % cached", "HybridPrefixCache 0 % cached"
    recipe, prefilled = "deepcopy recipe 87.5 %, patched", "prefilled cache 87.5 %, no copy, patched"
    tail = "cold, the last 12.5 % alone, patched"
    print("\nchecks (paired medians):")
    print(f"  TTFT 87.5 % ours / deepcopy recipe (patched)   {paired(ours_full, recipe, 0):.3f}  (target <= 1.10)")
    print(f"  TTFT cold unpatched / ours 87.5 %              {paired(cold_u, ours_full, 0):.2f}x (target >= 4.5)")
    print(f"  TTFT ours 87.5 % / cold on the uncached 12.5 % {paired(ours_full, tail, 0):.3f}  (target <= 1.15)")
    print(f"    of which attention over the cached keys      {paired(prefilled, tail, 0):.3f}  (prefilled, no copy / cold 12.5 %)")
    print(f"    and our lookup and restore                   {paired(ours_full, prefilled, 0):.3f}  (ours / prefilled, no copy)")
    print(f"  TTFT ours 0 % / cold DynamicCache (patched)    {paired(ours_none, cold_p, 0):.3f}  (target <= 1.05)")
    print(f"  TTFT ours 0 % / cold DynamicCache (unpatched)  {paired(ours_none, cold_u, 0):.3f}")
    print(f"  decode ours 0 % / DynamicCache (patched)       {paired(ours_none, cold_p, 1):.3f}  (target <= 1.05)")
    print(f"  whole generate ours 0 % / DynamicCache (pat.)  {paired(ours_none, cold_p, 2):.3f}  (includes publish)")


if __name__ == "__main__":
    main()
