"""The Redis tier: TTFT of a prompt with 7/8 of its 2048 tokens cached, served from the local device tier, from
Redis into a process that never computed it, and cold; the tier's write throughput; and a cold request with
Redis unreachable against one without a remote tier.

    .venv/bin/python benchmarks/remote.py [--rounds 9] [--prompt-len 2048]

Starts its own redis-server (Debian's) on a free loopback port. The main process publishes the cached 7/8 to
Redis; a second process (the reader) then times, in every round and in a rotating order: cold (a
DynamicCache), a hit from Redis (a new, empty local store each round, so every block comes from Redis), and
a hit from the local device tier (the same request again on that store). Ratios are per round; medians are
printed. Model: Qwen3-Next of 8 layers, hidden 512, 8 K/V heads of 128 (as benchmarks/persist.py).
"""

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch
from transformers import DynamicCache

import hf_hybrid_cache as hhc
from hf_hybrid_cache.store.redis_tier import RedisTier
from hf_hybrid_cache.tiny import tiny_qwen3_next

warnings.filterwarnings("ignore")
BLOCK_SIZE = 256


def model():
    return hhc.patch(tiny_qwen3_next(seed=0, num_hidden_layers=8, hidden_size=512, num_attention_heads=16,
                                     num_key_value_heads=8, head_dim=128))


def prompt(prompt_len: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 300, (1, prompt_len), generator=torch.Generator().manual_seed(seed))


def ttft(model, input_ids, cache) -> float:
    start = time.perf_counter()
    model.generate(input_ids, attention_mask=torch.ones_like(input_ids), cache=cache, max_new_tokens=1, do_sample=False)
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis() -> tuple[subprocess.Popen, str, str]:
    if shutil.which("redis-server") is None:
        sys.exit("needs Debian's redis-server (apt-get install redis-server)")
    port, folder = free_port(), tempfile.mkdtemp(prefix="hhc-bench-redis-")
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", folder], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    tier = RedisTier(url)
    for _ in range(200):
        try:
            tier.client.ping()
            break
        except Exception:
            time.sleep(0.025)
    tier.close()
    return process, url, folder


def store(remote=None) -> hhc.PrefixStore:
    return hhc.PrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode="align", max_bytes=1 << 30, remote=remote)


def reader(url: str, rounds: int, prompt_len: int) -> None:
    """The second process: cold vs a hit from Redis vs a hit from the local tier; prints JSON."""
    served = model()
    input_ids = prompt(prompt_len, seed=1)
    cached = prompt_len // 8 * 7
    ttft(served, prompt(prompt_len, seed=9), hhc.HybridPrefixCache(served, store=store()))  # warm up
    variants = ["cold", "redis", "local"]
    times = {name: [] for name in variants}
    for round_idx in range(rounds + 1):
        local_store, row = store(remote=RedisTier(url)), {}
        # "local" needs the blocks "redis" brought in: it runs right after it, and the pair rotates with cold.
        order = [["cold"], ["redis", "local"]][:: 1 if round_idx % 2 else -1]
        for name in (n for group in order for n in group):
            if name == "cold":
                row[name] = ttft(served, input_ids, DynamicCache(config=served.config))
                continue
            cache = hhc.HybridPrefixCache(served, store=local_store)
            row[name] = ttft(served, input_ids, cache)
            assert cache.num_cached_tokens == cached, (name, cache.num_cached_tokens)
        assert local_store.stats()["remote"]["hit_blocks"] == cached // BLOCK_SIZE
        local_store.close()
        if round_idx:  # the first round warms up
            for name in variants:
                times[name].append(row[name])
    print(json.dumps(times))


def write_throughput(url: str, served, num_blocks: int = 256) -> tuple[float, float]:
    """(MiB/s, blocks/s) of `RedisTier.write` + its writer until flushed: pages and snapshots of `served`."""
    probe = store()
    hhc.HybridPrefixCache(served, store=probe)  # binds: the page and snapshot shapes
    page = [torch.randn(spec.shape).to(spec.dtype) for spec in probe.page_specs]
    snapshot = [torch.randn(spec.shape).to(spec.dtype) for spec in probe.snapshot_specs]
    tier = RedisTier(url, key_prefix="throughput:", max_pending_bytes=8 << 30)
    tier.bind(probe.page_specs, probe.snapshot_specs)
    start = time.perf_counter()
    for block_idx in range(num_blocks):
        tier.write(block_idx.to_bytes(16, "little"), None, page, snapshot)
    assert tier.flush(timeout_s=600)
    seconds = time.perf_counter() - start
    assert tier.stats()["writes"] == 2 * num_blocks, tier.stats()
    tier.close()
    return num_blocks * (probe.page_bytes + probe.snapshot_bytes) / seconds / 2**20, num_blocks / seconds


def unreachable(served, rounds: int, prompt_len: int) -> float:
    """Median per-round ratio of a cold request's TTFT with an unreachable Redis (a closed port) over one
    without a remote tier (both miss)."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    down, plain = store(remote=RedisTier(closed)), store()
    ratios = []
    for round_idx in range(rounds + 1):
        input_ids = prompt(prompt_len, seed=100 + round_idx)  # new each round: both miss
        pair = {}
        for name in (["down", "plain"] if round_idx % 2 else ["plain", "down"]):
            cache = hhc.HybridPrefixCache(served, store=down if name == "down" else plain)
            pair[name] = ttft(served, input_ids, cache)
            assert cache.num_cached_tokens == 0
        if round_idx:
            ratios.append(pair["down"] / pair["plain"])
    assert down.stats()["remote"]["errors"] >= 1
    down.close()
    return statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--prompt-len", type=int, default=2048)
    parser.add_argument("--reader", default=None, help=argparse.SUPPRESS)  # the second process
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.reader:
        reader(args.reader, args.rounds, args.prompt_len)
        return
    process, url, folder = start_redis()
    try:
        served = model()
        cached = args.prompt_len // 8 * 7
        writer = store(remote=url)
        input_ids = prompt(args.prompt_len, seed=1)
        served.generate(input_ids[:, : cached + 1], cache=hhc.HybridPrefixCache(served, store=writer), max_new_tokens=1)
        writer.close()  # flushed: the cached 7/8 is in Redis
        result = subprocess.run([sys.executable, __file__, "--reader", url, "--rounds", str(args.rounds),
                                 "--prompt-len", str(args.prompt_len)], capture_output=True, text=True, check=True)
        times = json.loads(result.stdout.strip().splitlines()[-1])
        mib_s, blocks_s = write_throughput(url, served)
        overhead = unreachable(served, args.rounds, args.prompt_len)
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(folder, ignore_errors=True)
    cold = statistics.median(times["cold"])
    print(f"TTFT, {args.prompt_len} tokens, {cached} cached (block {BLOCK_SIZE}), {args.rounds} rounds (medians)")
    print(f"{'variant':<26s}{'TTFT ms':>10s}{'x vs cold':>11s}")
    labels = {"cold": "cold", "redis": "hit from Redis (reader)", "local": "hit from the device tier"}
    for name in ("cold", "redis", "local"):
        median = statistics.median(times[name])
        print(f"{labels[name]:<26s}{median * 1000:>10.1f}{cold / median:>10.2f}x")
    cold_over_redis = statistics.median(c / r for c, r in zip(times["cold"], times["redis"]))
    redis_over_local = statistics.median(r / loc for r, loc in zip(times["redis"], times["local"]))
    print(f"\ncold / Redis hit:        {cold_over_redis:.2f}x (target >= 3)")
    print(f"Redis hit / local hit:   {redis_over_local:.3f} (target <= 1.3)")
    print(f"cold with Redis unreachable / without a remote tier: {overhead:.3f} (target <= 1.05)")
    print(f"writes: {mib_s:.0f} MiB/s, {blocks_s:.0f} blocks/s (page + snapshot each, through the writer thread)")


if __name__ == "__main__":
    main()
