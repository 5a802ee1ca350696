"""Peak memory of one long request per mode, each in a fresh process: what saving snapshots adds over mode
none must stay within the store's budget plus two snapshots, whatever the prompt length.

    .venv/bin/python benchmarks/memory.py [--prompt-len 4096] [--block-size 64] [--budget-mib 64]

Model: GDN layers of Qwen3-Next-80B's shape (16 key heads, 32 value heads, 128 x 128 state per head: one
snapshot of its 3 GDN layers is ~6.4 MiB) in a 4-layer tiny model (hidden 256). Peak: the process's
maximum resident set (`ru_maxrss`), so the model and the forward's own transients, equal in every mode,
cancel in the growth over mode none.
"""

import argparse
import json
import resource
import subprocess
import sys
import warnings

import torch

import hf_hybrid_cache as hhc
from hf_hybrid_cache.tiny import tiny_qwen3_next

warnings.filterwarnings("ignore")
MODES = ("none", "align", "branch", "all")
QWEN3_NEXT_GDN = dict(hidden_size=256, linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128,
                      linear_value_head_dim=128)


def one_request(mode: str, args) -> dict:
    """Run one request in this process; its peak memory and what the store holds after."""
    model = hhc.patch(tiny_qwen3_next(**QWEN3_NEXT_GDN))
    store = hhc.PrefixStore(block_size=args.block_size, mamba_cache_mode=mode, max_bytes=args.budget_mib << 20)
    prompt = torch.randint(3, 300, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    model.generate(prompt, cache=hhc.HybridPrefixCache(model, store=store), max_new_tokens=1, pad_token_id=0)
    stats = store.stats()
    return dict(peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, snapshots=stats["snapshots"],
                snapshot_mib=stats["snapshot_bytes"] / 2**20, bytes_used_mib=stats["bytes_used"] / 2**20)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-len", type=int, default=4096)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--budget-mib", type=int, default=64)
    parser.add_argument("--variant", choices=MODES, help=argparse.SUPPRESS)  # run one mode, print JSON
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(one_request(args.variant, args)))
        return

    results = {}
    for mode in MODES:
        command = [sys.executable, __file__, "--variant", mode, "--prompt-len", str(args.prompt_len),
                   "--block-size", str(args.block_size), "--budget-mib", str(args.budget_mib)]
        results[mode] = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    snapshot_mib = results["all"]["snapshot_mib"]
    bound = args.budget_mib + 2 * snapshot_mib
    print(f"prompt {args.prompt_len} tokens, block {args.block_size}, budget {args.budget_mib} MiB, one snapshot "
          f"{snapshot_mib:.1f} MiB; bound on the growth over none: budget + 2 snapshots = {bound:.0f} MiB\n")
    print(f"{'mode':8s}{'peak MiB':>10s}{'growth MiB':>12s}{'stored MiB':>12s}{'snapshots':>11s}  within bound")
    for mode, r in results.items():
        growth = r["peak_mib"] - results["none"]["peak_mib"]
        print(f"{mode:8s}{r['peak_mib']:10.0f}{growth:12.0f}{r['bytes_used_mib']:12.1f}{r['snapshots']:11d}  "
              f"{'yes' if growth <= bound else 'NO'}")


if __name__ == "__main__":
    main()
