"""Token hit rate of each mode and eviction policy under three budgets, on a mixed workload, next to the
bound an unlimited store would reach.

    .venv/bin/python benchmarks/trace.py [--budgets 8 15 40] [--block-size 32] [--seed 0] [--breakdown]
                                         [--configs branch/cost ...]   # a subset of mode/policy columns
                                         [--future]   # also branch with an eviction that knows the future

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
from hf_hybrid_cache.store.eviction import EVICTION_POLICIES, EvictionPolicy, Victim
from hf_hybrid_cache.store.hashing import block_keys
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
    """Serve the events; returns the hit rate and, per request served: its kind, prompt, tokens served from
    the store, and the sequence it computed."""
    history = {chat: system[None] for chat, system in chat_systems.items()}
    last_prompt, requests = {}, []
    for kind, chat, new_tokens in events:
        if kind == "turn":
            prompt = torch.cat([history[chat], new_tokens[None]], dim=1)
        elif kind == "regenerate":
            if chat not in last_prompt:
                continue
            prompt = last_prompt[chat]
        else:
            prompt = torch.cat([document, new_tokens])[None]
        cache = hhc.HybridPrefixCache(model, store=store)
        output = model.generate(prompt, attention_mask=torch.ones_like(prompt), cache=cache,
                                max_new_tokens=SIZES["reply"], min_new_tokens=SIZES["reply"], do_sample=False, pad_token_id=0)
        if kind == "turn" and history[chat].shape[1] == len(chat_systems[chat]):
            kind = "first turn"
        if kind != "question":
            history[chat], last_prompt[chat] = output, prompt
        # The last generated token is never fed back: the sequence computed ends before it.
        requests.append((kind, prompt[0], cache.num_cached_tokens, output[0, :-1]))
    return store.stats()["hit_rate"], requests


def oracle_hits(requests, block_size: int) -> list[int]:
    """Per request, the longest block-aligned prefix an earlier request computed (leaving one token)."""
    seen, hits = set(), []
    for _, prompt, _, computed in requests:
        keys = block_keys(b"oracle", prompt[:-1], block_size)
        hits.append(next((i for i, key in enumerate(keys) if key not in seen), len(keys)) * block_size)
        seen.update(block_keys(b"oracle", computed, block_size))
    return hits


class FutureEviction(EvictionPolicy):
    """An eviction that knows every request to come (`paths`: their usable block keys, in order): it evicts
    the entry whose next hit is farthest away (Belady's rule, one tier), leaf pages past the last snapshot
    first. A reference for how much any eviction policy could serve, not a policy: a server does not know
    its future requests."""

    name = "future"

    def __init__(self, paths: list[list[bytes]]):
        self.paths, self.num_lookups = paths, 0

    def victim(self, blocks, holds, may_go):
        blocks = list(blocks)
        by_key = {block.key: block for block in blocks}
        next_hit = {}  # block key -> index of the next request whose deepest stored snapshot it holds
        for request_idx in range(self.num_lookups, len(self.paths)):
            deepest = None
            for key in self.paths[request_idx]:
                block = by_key.get(key)
                if block is None:
                    break
                if block.snapshot_id is not None:
                    deepest = key
            next_hit.setdefault(deepest, request_idx)
        never = len(self.paths)
        candidates = []
        for block in blocks:
            if block.num_pins:
                continue
            has_snapshot = block.snapshot_id is not None
            if has_snapshot:
                candidates.append((next_hit.get(block.key, never), 1, Victim(block, snapshot_only=True)))
            if may_go(block) and has_snapshot:
                candidates.append((next_hit.get(block.key, never), 0, Victim(block)))
            elif may_go(block):  # a leaf page past the last snapshot: no hit can use it
                candidates.append((never, 2, Victim(block)))
        return max(candidates, key=lambda c: c[:2])[2] if candidates else None


class FutureStore(hhc.PrefixStore):
    """A one-tier store evicting with `FutureEviction`."""

    def __init__(self, paths: list[list[bytes]], **kwargs):
        super().__init__(**kwargs)
        self.future = FutureEviction(paths)

    def bind(self, layout, model_fingerprint=None):
        super().bind(layout, model_fingerprint)
        self._tiers.policy = self.future

    def lookup(self, *args, **kwargs):
        self.future.num_lookups += 1
        return super().lookup(*args, **kwargs)


def print_breakdown(requests, oracle: list[int]) -> None:
    """Tokens served vs the oracle's, per kind of request."""
    for kind in ("first turn", "turn", "regenerate", "question"):
        rows = [(request[2], best) for request, best in zip(requests, oracle) if request[0] == kind]
        served, best = sum(r[0] for r in rows), sum(r[1] for r in rows)
        print(f"  {kind:11s} {len(rows):3d} requests, served {served:6d} of the oracle's {best:6d} tokens ({served / max(best, 1):.2f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=int, nargs="+", default=[8, 15, 40], help="in snapshots' worth of bytes")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--breakdown", action="store_true", help="per kind of request, for branch/cost")
    parser.add_argument("--configs", nargs="+", default=None, help="mode/policy columns to run (default: all)")
    parser.add_argument("--future", action="store_true", help="also branch with an eviction that knows the future")
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
    unlimited_rate, requests = run(model, unlimited, events, chat_systems, document)
    best_hits = oracle_hits(requests, args.block_size)
    oracle = sum(best_hits) / sum(len(prompt) for _, prompt, _, _ in requests)
    print(f"oracle {oracle:.3f}; mode all with unlimited memory {unlimited_rate:.3f} "
          f"({time.perf_counter() - start:.0f} s per configuration)\n")

    columns = [(mode, policy) for mode in MODES for policy in EVICTION_POLICIES]
    if args.configs:
        columns = [column for column in columns if "/".join(column) in args.configs]
    print(f"{'budget':>8s}{'oracle':>8s}" + "".join(f"{f'{mode}/{policy}':>13s}" for mode, policy in columns))
    results, breakdowns = {}, {}
    for budget in args.budgets:
        row = f"{budget:>8d}{oracle:8.3f}"
        for mode, policy in columns:
            store = hhc.PrefixStore(block_size=args.block_size, mamba_cache_mode=mode,
                                    max_bytes=budget * probe.snapshot_bytes, eviction=policy)
            results[budget, mode, policy], served = run(model, store, events, chat_systems, document)
            row += f"{results[budget, mode, policy]:13.3f}"
            breakdowns[budget, mode, policy] = served
        print(row, flush=True)

    budget = min(args.budgets, key=lambda b: abs(b - 15))
    print(f"\nat a budget of {budget} snapshots:")
    for policy in EVICTION_POLICIES:
        if any((budget, mode, policy) not in results for mode in MODES):
            continue
        branch = results[budget, "branch", policy]
        other = max(results[budget, "align", policy], results[budget, "all", policy])
        print(f"  {policy:5s} branch / oracle {branch / oracle:.2f} (target >= 0.8); "
              f"branch / best of align, all {branch / other if other else float('inf'):.2f} (target >= 1.25)")
    if args.future:
        root = hhc.HybridPrefixCache(model, store=probe)._root
        paths = [block_keys(root, prompt[:-1], args.block_size) for _, prompt, _, _ in requests]
        store = FutureStore(paths, block_size=args.block_size, mamba_cache_mode="branch",
                            max_bytes=budget * probe.snapshot_bytes)
        future, _ = run(model, store, events, chat_systems, document)
        print(f"  branch with an eviction that knows every future request: {future:.3f} = {future / oracle:.2f} of the oracle")
    if args.breakdown and (budget, "branch", "cost") in breakdowns:
        print(f"\nbranch / cost at {budget} snapshots, per kind of request:")
        print_breakdown(breakdowns[budget, "branch", "cost"], best_hits)


if __name__ == "__main__":
    main()
