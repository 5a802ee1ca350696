"""Token hit rate of each mode and eviction policy under three budgets, on a mixed workload, next to the
bound an unlimited store would reach.

    .venv/bin/python benchmarks/trace.py [--budgets 8 15 40] [--block-size 32] [--seed 0]

Workload (interleaved, seeded): multi-turn chats over a few shared system prompts, questions over one long
shared document, and regenerations of a chat's last turn. Model: a tiny Qwen3-Next whose snapshot weighs
as much as ~3.4k tokens of K/V, as on Qwen3-Next-80B (≈ 3.2k): one K/V head of 16 per attention layer,
wide GDN states. Budgets are in snapshots' worth of bytes (pages included). The oracle serves every
request the longest block-aligned prefix any earlier request computed (unlimited memory, a state at every
boundary). Replies are greedy, so every configuration sees the same token streams.
"""

import argparse
import random
import time
import warnings

import torch

import hf_hybrid_cache as hhc
from hf_hybrid_cache.eviction import EVICTION_POLICIES
from hf_hybrid_cache.hashing import block_keys
from hf_hybrid_cache.tiny import tiny_qwen3_next

warnings.filterwarnings("ignore")
MODES = ("align", "branch", "all")
# GDN state 8 heads x 64 x 64 fp32 + conv per layer (x3 layers) vs 2 x 16 fp32 of K/V per token (x1 layer).
MODEL = dict(num_key_value_heads=1, head_dim=16, linear_num_key_heads=4, linear_num_value_heads=8,
             linear_key_head_dim=64, linear_value_head_dim=64)
# Shared parts of arbitrary lengths (not multiples of a block), as real prompts are.
SIZES = dict(system=300, user=40, reply=24, document=790, question=30)


def tokens(rng: random.Random, n: int) -> torch.Tensor:
    return torch.tensor([rng.randrange(3, 300) for _ in range(n)])


def workload(seed: int, num_systems=3, num_chats=12, num_turns=4, num_questions=10, num_regenerations=8):
    """Events in arrival order: ("turn", chat, user tokens), ("regenerate", chat), ("question", tokens)."""
    rng = random.Random(seed)
    turns = {chat: [("turn", chat, tokens(rng, SIZES["user"])) for _ in range(num_turns)] for chat in range(num_chats)}
    others = [("question", None, tokens(rng, SIZES["question"])) for _ in range(num_questions)]
    others += [("regenerate", rng.randrange(num_chats), None) for _ in range(num_regenerations)]
    events, queues = [], {chat: list(events) for chat, events in turns.items()}
    while any(queues.values()) or others:
        live = [chat for chat, queue in queues.items() if queue]
        if others and (not live or rng.random() < 0.2):
            events.append(others.pop(rng.randrange(len(others))))
        else:
            events.append(queues[rng.choice(live)].pop(0))
    systems = [tokens(rng, SIZES["system"]) for _ in range(num_systems)]
    chat_systems = {chat: systems[chat % num_systems] for chat in range(num_chats)}
    return events, chat_systems, tokens(rng, SIZES["document"])


def run(model, store, events, chat_systems, document):
    """Serve the events; returns (hit rate, the sequences each request computed, its prompts)."""
    history = {chat: system[None] for chat, system in chat_systems.items()}
    last_prompt, computed, prompts = {}, [], []
    for kind, chat, new_tokens in events:
        if kind == "turn":
            prompt = torch.cat([history[chat], new_tokens[None]], dim=1)
        elif kind == "regenerate":
            if chat not in last_prompt:
                continue
            prompt = last_prompt[chat]
        else:
            prompt = torch.cat([document, new_tokens])[None]
        output = model.generate(prompt, attention_mask=torch.ones_like(prompt), past_key_values=hhc.HybridPrefixCache(model, store=store),
                                max_new_tokens=SIZES["reply"], min_new_tokens=SIZES["reply"], do_sample=False, pad_token_id=0)
        if kind != "question":
            history[chat], last_prompt[chat] = output, prompt
        prompts.append(prompt[0])
        computed.append(output[0, :-1])  # the last generated token is never fed back
    return store.stats()["hit_rate"], computed, prompts


def oracle_hit_rate(prompts, computed, block_size: int) -> float:
    """Every request served the longest block-aligned prefix an earlier request computed (leaving one token)."""
    seen, hit, total = set(), 0, 0
    for prompt, sequence in zip(prompts, computed):
        keys = block_keys(b"oracle", prompt[:-1], block_size)
        hit += next((i for i, key in enumerate(keys) if key not in seen), len(keys)) * block_size
        total += len(prompt)
        seen.update(block_keys(b"oracle", sequence, block_size))
    return hit / total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=int, nargs="+", default=[8, 15, 40], help="in snapshots' worth of bytes")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = hhc.patch(tiny_qwen3_next(**MODEL))
    probe = hhc.PrefixStore(block_size=args.block_size)
    hhc.HybridPrefixCache(model, store=probe)
    kv_bytes_per_token = probe.page_bytes // args.block_size
    events, chat_systems, document = workload(args.seed)
    print(f"block {args.block_size}; one snapshot {probe.snapshot_bytes / 1024:.0f} KiB = "
          f"{probe.snapshot_bytes / kv_bytes_per_token:.0f} tokens of K/V; {len(events)} events\n")

    start = time.perf_counter()
    unlimited = hhc.PrefixStore(block_size=args.block_size, mamba_cache_mode="all", max_bytes=1 << 40)
    unlimited_rate, computed, prompts = run(model, unlimited, events, chat_systems, document)
    oracle = oracle_hit_rate(prompts, computed, args.block_size)
    print(f"oracle {oracle:.3f}; mode all with unlimited memory {unlimited_rate:.3f} "
          f"({time.perf_counter() - start:.0f} s per configuration)\n")

    columns = [(mode, policy) for mode in MODES for policy in EVICTION_POLICIES]
    print(f"{'budget':>8s}{'oracle':>8s}" + "".join(f"{f'{mode}/{policy}':>13s}" for mode, policy in columns))
    results = {}
    for budget in args.budgets:
        row = f"{budget:>8d}{oracle:8.3f}"
        for mode, policy in columns:
            store = hhc.PrefixStore(block_size=args.block_size, mamba_cache_mode=mode,
                                    max_bytes=budget * probe.snapshot_bytes, eviction=policy)
            results[budget, mode, policy] = run(model, store, events, chat_systems, document)[0]
            row += f"{results[budget, mode, policy]:13.3f}"
        print(row, flush=True)

    budget = min(args.budgets, key=lambda b: abs(b - 15))
    print(f"\nat a budget of {budget} snapshots:")
    for policy in EVICTION_POLICIES:
        branch = results[budget, "branch", policy]
        other = max(results[budget, "align", policy], results[budget, "all", policy])
        print(f"  {policy:5s} branch / oracle {branch / oracle:.2f} (target >= 0.8); "
              f"branch / best of align, all {branch / other if other else float('inf'):.2f} (target >= 1.25)")


if __name__ == "__main__":
    main()
