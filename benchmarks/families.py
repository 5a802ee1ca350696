"""Per family: TTFT of a cold run vs a run with 7/8 of the prompt cached, and what saving states costs a
prefill (mode all and align vs none), side by side in one run per family.

    .venv/bin/python benchmarks/families.py [--families qwen3_5 lfm2 ...] [--rounds 9] [--prompt-len 2048]

Models: each family's tiny config (`hf_hybrid_cache.tiny`) widened to hidden 256, random weights. Every
variant runs once per round in an order rotated each round; ratios are taken within a round and the
median over rounds is printed (shared/NOTES.md, "Measuring"). Run it on a quiet machine.
"""

import argparse
import statistics
import time
import warnings

import torch
from transformers import DynamicCache

import hf_hybrid_cache as hhc
from hf_hybrid_cache.tiny import TINY_FAMILIES, tiny_model

warnings.filterwarnings("ignore")
# Multimodal models whose text model is a family of its own here (widening reaches the top-level config only).
TEXT_TWINS = {"qwen3_5_vl", "inkling_mm_model", "nemotron_h_omni", "nemo_speechlm"}
FAMILIES = ["qwen3_next", *(name for name in TINY_FAMILIES if name not in TEXT_TWINS)]
# Hidden 256; Qwen3-Next as in benchmarks/ttft.py (8 layers, hidden 256).
WIDER = dict(hidden_size=256, intermediate_size=512)
WIDER_QWEN3_NEXT = dict(num_hidden_layers=8, hidden_size=256)


def ttft(model, prompt, cache) -> float:
    """Seconds from calling generate to its first token (one new token: no decode step follows)."""
    start = time.perf_counter()
    model.generate(prompt, attention_mask=torch.ones_like(prompt), cache=cache, max_new_tokens=1,
                   min_new_tokens=1, do_sample=False, pad_token_id=0)
    return time.perf_counter() - start


@torch.no_grad()
def prefill_forwards(model, prompt, num_forwards: int) -> float:
    """Seconds for transformers alone to prefill `prompt` in `num_forwards` equal forwards on a DynamicCache:
    the cost of splitting a prefill, which the generic path's mode all pays."""
    cache, step = DynamicCache(config=model.config), prompt.shape[1] // num_forwards
    start = time.perf_counter()
    for begin in range(0, prompt.shape[1], step):
        positions = torch.arange(begin, begin + step)[None]
        model(input_ids=prompt[:, begin : begin + step], position_ids=positions, cache=cache, logits_to_keep=1)
    return time.perf_counter() - start


def measure(family: str, args) -> dict[str, float]:
    overrides = WIDER_QWEN3_NEXT if family == "qwen3_next" else WIDER
    cold_model = tiny_model(family, **overrides)
    model = hhc.patch(tiny_model(family, **overrides))
    prompt = torch.randint(3, 300, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    cached_len = args.prompt_len * 7 // 8
    hit_store = hhc.PrefixStore(block_size=args.block_size, mamba_cache_mode="align", max_bytes=1 << 32)
    # One token past the boundary, so align mode saves the state exactly there.
    warm = torch.cat([prompt[:, :cached_len], torch.full((1, 1), 3)], dim=1)
    model.generate(warm, cache=hhc.HybridPrefixCache(model, store=hit_store), max_new_tokens=1, pad_token_id=0)

    def ours(mode: str):
        def run():
            store = hhc.PrefixStore(block_size=args.block_size, mamba_cache_mode=mode, max_bytes=1 << 32)
            return ttft(model, prompt, hhc.HybridPrefixCache(model, store=store))

        return run

    def hit():
        cache = hhc.HybridPrefixCache(model, store=hit_store)
        seconds = ttft(model, prompt, cache)
        if cache.num_cached_tokens != cached_len:
            raise RuntimeError(f"{family}: expected {cached_len} cached tokens, got {cache.num_cached_tokens}")
        return seconds

    variants = {
        "cold": lambda: ttft(cold_model, prompt, DynamicCache(config=cold_model.config)),
        "none": ours("none"),
        "align": ours("align"),
        "all": ours("all"),
        "hit": hit,
        "hf one forward": lambda: prefill_forwards(cold_model, prompt, 1),
        "hf split forwards": lambda: prefill_forwards(cold_model, prompt, args.prompt_len // args.block_size),
    }
    names = list(variants)
    for name in names:  # warm-up: lazy imports, allocator
        variants[name]()
    results = {name: [] for name in names}
    for round_idx in range(args.rounds):
        for name in names[round_idx % len(names) :] + names[: round_idx % len(names)]:
            results[name].append(variants[name]())

    def paired(a, b):
        return statistics.median(x / y for x, y in zip(results[a], results[b]))

    return dict(
        path=model._hf_hybrid_cache_path,
        cold_ms=1000 * statistics.median(results["cold"]),
        hit_ms=1000 * statistics.median(results["hit"]),
        speedup=paired("cold", "hit"),
        none_vs_cold=paired("none", "cold"),
        align_vs_none=paired("align", "none"),
        all_vs_none=paired("all", "none"),
        hf_split=paired("hf split forwards", "hf one forward"),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=FAMILIES, choices=FAMILIES)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--prompt-len", type=int, default=2048)
    parser.add_argument("--block-size", type=int, default=256)
    args = parser.parse_args()
    print(f"prompt {args.prompt_len} tokens, 7/8 cached for the hit, block {args.block_size}, {args.rounds} rounds, "
          f"torch threads {torch.get_num_threads()}\n")
    header = ("family", "path", "cold ms", "hit ms", "hit x", "none/cold", "align/none", "all/none", "hf split")
    print(f"{header[0]:18s}{header[1]:>16s}" + "".join(f"{h:>11s}" for h in header[2:]))
    for family in args.families:
        r = measure(family, args)
        print(f"{family:18s}{r['path']:>16s}{r['cold_ms']:11.1f}{r['hit_ms']:11.1f}{r['speedup']:10.2f}x"
              f"{r['none_vs_cold']:11.3f}{r['align_vs_none']:11.3f}{r['all_vs_none']:11.3f}{r['hf_split']:11.3f}", flush=True)
    print("\ntargets: hit x >= 4 for every family; all/none <= 1.05 one-pass, <= 1.3 generic; align/none <= 1.05")
    print("hf split: transformers alone, the prompt in prompt_len / block_size forwards vs one (the generic path's floor)")


if __name__ == "__main__":
    main()
