"""Persistence and the host tier: save and load speed per GiB, and the time to first token of a hit served from
the host tier vs the device tier vs a cold run, side by side in one run.

    .venv/bin/python benchmarks/persist.py [--store-mib 512] [--rounds 5] [--prompt-len 2048]

Save / load: a store filled by real requests (a Qwen3-Next of 8 layers, hidden 512, 8 K/V heads of 128, mode
all, block 64) is saved to a temporary folder, then loaded from it; the load is timed after a first load has
put the file in the page cache (the figure the target is about). Medians of `--rounds`.

TTFT, 7/8 of the prompt cached (block 256): "device": both prompts' blocks stay in the device tier; "host":
the device tier holds one prompt's blocks, so serving one prompt first moves it back from the host tier
(where serving the other put it), and requests alternate between the two. On a CPU both tiers are host
memory: the difference is the copies between them. Every variant runs once per round in a rotated order;
ratios are taken within a round, medians printed (shared/NOTES.md, "Measuring"). Run it on a quiet machine.
"""

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import hf_hybrid_cache as hhc
from hf_hybrid_cache.tiny import tiny_qwen3_next

warnings.filterwarnings("ignore")
GIB = 1 << 30


def random_prompt(num_tokens: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 300, (1, num_tokens), generator=torch.Generator().manual_seed(seed))


def fill(model, store, target_bytes: int, prompt_len: int) -> int:
    """Publish distinct prompts until the store holds `target_bytes`; returns how many ran."""
    seed = 0
    while store.bytes_used < target_bytes:
        model.generate(random_prompt(prompt_len, seed), cache=hhc.HybridPrefixCache(model, store=store), max_new_tokens=1)
        seed += 1
    return seed


def save_load(model, rounds: int, store_mib: int) -> None:
    store = hhc.PrefixStore(block_size=64, mamba_cache_mode="all", max_bytes=4 * store_mib << 20)
    num_prompts = fill(model, store, store_mib << 20, prompt_len=2048)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "store.safetensors"
        save_s, load_s = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            store.save(path)
            save_s.append(time.perf_counter() - start)
        hhc.PrefixStore.load(path)  # into the page cache
        for _ in range(rounds):
            start = time.perf_counter()
            loaded = hhc.PrefixStore.load(path)
            load_s.append(time.perf_counter() - start)
        file_gib = path.stat().st_size / GIB
    assert loaded.stats()["blocks"] == store.stats()["blocks"]
    stats = store.stats()
    print(f"store: {stats['bytes_used'] / GIB:.2f} GiB, {stats['blocks']} blocks, {stats['snapshots']} snapshots "
          f"({num_prompts} prompts of 2048 tokens); file {file_gib:.2f} GiB")
    save, load = statistics.median(save_s), statistics.median(load_s)
    print(f"save: {save:.2f} s = {file_gib / save:.2f} GiB/s   load (page cache): {load:.2f} s = {file_gib / load:.2f} GiB/s\n")


def host_vs_device(model, rounds: int, prompt_len: int) -> None:
    block_size = 256
    cached = prompt_len // 8 * 7
    prompts = [torch.cat([random_prompt(cached, seed), random_prompt(prompt_len - cached, 100 + seed)], 1) for seed in (1, 2)]
    probe = hhc.PrefixStore(block_size=block_size, mamba_cache_mode="align")
    model.generate(prompts[0], cache=hhc.HybridPrefixCache(model, store=probe), max_new_tokens=1)
    one_prompt = probe.bytes_used  # the blocks (and snapshots) one prompt publishes
    stores = {
        "device": hhc.PrefixStore(block_size=block_size, mamba_cache_mode="align", max_bytes=4 * one_prompt),
        "host": hhc.PrefixStore(block_size=block_size, mamba_cache_mode="align", max_bytes=one_prompt,
                                host_bytes=4 * one_prompt),
    }
    for store in stores.values():
        for prompt in prompts:  # publish the cached 7/8 of each prompt
            model.generate(prompt[:, :cached + 1], cache=hhc.HybridPrefixCache(model, store=store), max_new_tokens=1)

    def ttft(prompt, store) -> tuple[float, int]:
        cache = hhc.HybridPrefixCache(model, store=store) if store is not None else None
        start = time.perf_counter()
        model.generate(prompt, max_new_tokens=1, **({"cache": cache} if cache is not None else {}))
        return time.perf_counter() - start, cache.num_cached_tokens if cache is not None else 0

    variants = ["cold", "device", "host"]
    times = {name: [] for name in variants}
    for round_idx in range(rounds + 1):
        order = variants[round_idx % 3 :] + variants[: round_idx % 3]
        # Alternate the prompts: in the host store, the one asked for was moved down by serving the other.
        prompt = prompts[round_idx % 2]
        row = {}
        for name in order:
            seconds, num_cached = ttft(prompt, stores.get(name))
            assert num_cached == (0 if name == "cold" else cached), (name, num_cached)
            row[name] = seconds
        if round_idx:  # the first round warms up
            for name in variants:
                times[name].append(row[name])
    tiers = stores["host"].stats()["tiers"]
    assert tiers["device"]["promotions"] >= rounds, tiers  # every host hit really came from the host tier
    cold = statistics.median(times["cold"])
    print(f"TTFT, {prompt_len} tokens, {cached} cached (block {block_size}), {rounds} rounds (medians)")
    print(f"{'variant':<8s}{'TTFT ms':>10s}{'x vs cold':>11s}")
    for name in variants:
        median = statistics.median(times[name])
        print(f"{name:<8s}{median * 1000:>10.1f}{cold / median:>10.2f}x")
    ratios = [host / device for host, device in zip(times["host"], times["device"])]
    print(f"host / device hit: {statistics.median(ratios):.3f} (target <= 1.2); "
          f"{tiers['device']['promotions']} entries moved up, {tiers['device']['demotions']} down")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store-mib", type=int, default=512, help="how much the saved store holds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompt-len", type=int, default=2048)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = hhc.patch(tiny_qwen3_next(seed=0, num_hidden_layers=8, hidden_size=512, num_attention_heads=16,
                                      num_key_value_heads=8, head_dim=128))
    save_load(model, args.rounds, args.store_mib)
    host_vs_device(model, args.rounds, args.prompt_len)


if __name__ == "__main__":
    main()
