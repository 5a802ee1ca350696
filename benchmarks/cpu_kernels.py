"""The fast CPU chunked GDN (kernels/chunk_cpu.py) against transformers' reference, and what it buys a prefill.

    .venv/bin/python benchmarks/cpu_kernels.py [--pairs 7] [--prompt-len 2048]

(a) the op at the tiny benchmark model's shapes, on the inputs its first GDN layer really gets (strides
and decays included) and on synthetic ones; (b) cold TTFT, unpatched vs `hf_hybrid_cache.patch`ed model;
(c) a patched prefill into a `HybridPrefixCache`, mamba_cache_mode "all" vs "none" (the snapshot cost).
Each line is the median over paired runs (baseline and candidate back to back, alternating which goes
first) of time A / time B, after one warm-up of each (shared/NOTES.md, "Measuring").

Not named kernels.py: a script's folder goes first on sys.path, and a `kernels` module there shadows
Hugging Face's kernel hub package, which transformers imports.
"""

import argparse
import statistics
import time
import warnings

import torch
from transformers.models.qwen3_next import modeling_qwen3_next as modeling

import hf_hybrid_cache as hhc
from hf_hybrid_cache.kernels.chunk_cpu import chunk_gated_delta_rule_cpu
from hf_hybrid_cache.tiny import tiny_qwen3_next

warnings.filterwarnings("ignore")

MODEL_KWARGS = dict(num_hidden_layers=8, hidden_size=256)
BLOCK_SIZE = 256


def paired(run_a, run_b, num_pairs: int) -> tuple[float, float, float]:
    """Median seconds of A, median seconds of B, and the median over pairs of time A / time B."""
    run_a(), run_b()  # warm-up: lazy imports, allocator
    times = {run_a: [], run_b: []}
    for i in range(num_pairs):
        for fn in (run_a, run_b) if i % 2 == 0 else (run_b, run_a):
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(times[run_a], times[run_b])]
    return statistics.median(times[run_a]), statistics.median(times[run_b]), statistics.median(ratios)


def report(part: str, what: str, result: tuple[float, float, float], num_pairs: int, target: str) -> None:
    a_s, b_s, ratio = result
    print(f"{part:4s} {what:58s} {num_pairs:5d} {a_s * 1e3:9.1f} {b_s * 1e3:9.1f} {ratio:7.2f}   {target}")


def captured_gdn_inputs(model, input_ids):
    """(q, k, v, g, beta) as the model's first GDN layer passes them to transformers' chunked kernel."""
    captured = []
    original = modeling.torch_chunk_gated_delta_rule

    def capture(query, key, value, g, beta, **kwargs):
        captured.append((query, key, value, g, beta))
        return original(query, key, value, g, beta, **kwargs)

    modeling.torch_chunk_gated_delta_rule = capture
    try:
        with torch.no_grad():
            model(input_ids)
    finally:
        modeling.torch_chunk_gated_delta_rule = original
    return captured[0]


def bench_op(model, input_ids, num_pairs: int) -> None:
    model_inputs = captured_gdn_inputs(model, input_ids)
    q, k, v, g, beta = model_inputs
    synthetic = (torch.randn_like(q), torch.randn_like(k), torch.randn_like(v), -0.5 * torch.rand_like(g), beta)
    for name, inputs in (("model inputs, layer 0", model_inputs), ("synthetic, g in [-0.5, 0]", synthetic)):
        result = paired(
            lambda: modeling.torch_chunk_gated_delta_rule(
                *inputs, output_final_state=True, use_qk_l2norm_in_kernel=True
            ),
            lambda: chunk_gated_delta_rule_cpu(*inputs),
            num_pairs,
        )
        report("(a)", f"GDN op T={q.shape[1]}, {name}: transformers / ours", result, num_pairs, "target >= 2")


def bench_ttft(input_ids, num_pairs: int) -> None:
    if not hasattr(hhc, "patch"):
        print("(b)  skipped: hf_hybrid_cache.patch does not exist yet")
        return
    unpatched = tiny_qwen3_next(seed=0, **MODEL_KWARGS)
    patched = hhc.patch(tiny_qwen3_next(seed=0, **MODEL_KWARGS))

    def prefill(model):
        with torch.no_grad():
            model.generate(input_ids, max_new_tokens=1, do_sample=False)

    result = paired(lambda: prefill(unpatched), lambda: prefill(patched), num_pairs)
    report("(b)", f"cold TTFT {input_ids.shape[1]} tokens: unpatched / patched", result, num_pairs, "target >= 1.2")


def bench_snapshots(input_ids, num_pairs: int) -> None:
    if not all(hasattr(hhc, name) for name in ("patch", "PrefixStore", "HybridPrefixCache")):
        print("(c)  skipped: hf_hybrid_cache.patch / PrefixStore / HybridPrefixCache do not exist yet")
        return
    model = hhc.patch(tiny_qwen3_next(seed=0, **MODEL_KWARGS))

    def prefill(mode):
        # A fresh store each run: nothing hits, every run is a cold prefill that stores its blocks.
        store = hhc.PrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode=mode, max_bytes=1 << 30)
        cache = hhc.HybridPrefixCache(model, store=store)
        with torch.no_grad():
            model.generate(input_ids, cache=cache, max_new_tokens=1, do_sample=False)

    result = paired(lambda: prefill("all"), lambda: prefill("none"), num_pairs)
    report("(c)", f"patched prefill, block {BLOCK_SIZE}: mode all / none", result, num_pairs, "target <= 1.05")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--prompt-len", type=int, default=2048)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = tiny_qwen3_next(seed=0, **MODEL_KWARGS)
    input_ids = torch.randint(3, model.config.vocab_size, (1, args.prompt_len))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; times are medians in ms")
    print(f"{'part':4s} {'comparison (A / B)':58s} {'pairs':>5s} {'A ms':>9s} {'B ms':>9s} {'A/B':>7s}")
    bench_op(model, input_ids, args.pairs)
    bench_ttft(input_ids, args.pairs)
    bench_snapshots(input_ids, args.pairs)


if __name__ == "__main__":
    main()
