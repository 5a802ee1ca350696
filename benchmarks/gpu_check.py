"""GPU check of the Triton kernels: each against its reference (fp32 and bf16), then chunked GDN timings.

Run on a CUDA machine: `python benchmarks/gpu_check.py` (about a minute; under 5). Prints two tables: the
largest error of each kernel against `reference.py`, and the time of chunked GDN at Qwen3-Next shapes
(Hk 16, Hv 32, K = V = 128, T = 8192, B = 1) for our Triton kernels, our PyTorch path, and fla's
`chunk_gated_delta_rule` when fla is installed. Exits 1 if an error exceeds its tolerance.
"""

import sys

import torch

from hf_hybrid_cache.kernels import reference
from hf_hybrid_cache.kernels.chunk_cpu import chunk_gated_delta_rule_cpu

# Max |error| / max |reference| allowed; bf16 inputs round q, k, v to 8 bits of mantissa.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def gdn_inputs(batch_size, seq_len, num_k_heads, num_v_heads, head_dim, dtype):
    q, k = (torch.randn(batch_size, seq_len, num_k_heads, head_dim, device="cuda", dtype=dtype) for _ in range(2))
    v = torch.randn(batch_size, seq_len, num_v_heads, head_dim, device="cuda", dtype=dtype)
    g = -0.1 * torch.rand(batch_size, seq_len, num_v_heads, device="cuda")
    beta = torch.rand(batch_size, seq_len, num_v_heads, device="cuda")
    return q, k, v, g, beta


def accuracy_cases(dtype):
    """(name, triton call, reference call) pairs; each call returns a tuple of tensors."""
    from hf_hybrid_cache.kernels import conv_triton
    from hf_hybrid_cache.kernels.chunk_triton import chunk_gated_delta_rule_triton
    from hf_hybrid_cache.kernels.recurrent_triton import recurrent_gated_delta_rule_triton

    q, k, v, g, beta = gdn_inputs(2, 1000, 4, 8, 128, dtype)
    h0 = torch.randn(2, 8, 128, 128, device="cuda")
    gdn_kwargs = dict(initial_state=h0, checkpoint_offsets=(1, 63, 64, 65, 700, 1000))
    yield (
        "chunk_gated_delta_rule",
        lambda: chunk_gated_delta_rule_triton(q, k, v, g, beta, **gdn_kwargs),
        lambda: reference.chunk_gated_delta_rule_ref(q, k, v, g, beta, **gdn_kwargs),
    )
    step = [x[:, :2] for x in (q, k, v, g, beta)]
    yield (
        "recurrent_gated_delta_rule",
        lambda: (recurrent_gated_delta_rule_triton(*step, state=h0.clone()),),
        lambda: (reference.recurrent_gated_delta_rule_ref(*step, state=h0.clone()),),
    )
    shapes = ((2, 1000, 700), (1000, 4), (1000,))
    x, weight, bias = (torch.randn(*shape, device="cuda", dtype=dtype) for shape in shapes)
    conv_state = torch.randn(2, 1000, 4, device="cuda", dtype=dtype)
    conv_kwargs = dict(conv_state=conv_state, checkpoint_offsets=(1, 3, 64, 699))
    yield (
        "causal_conv1d",
        lambda: conv_triton.causal_conv1d_triton(x, weight, bias, **conv_kwargs),
        lambda: reference.causal_conv1d_ref(x, weight, bias, **conv_kwargs),
    )
    yield (
        "causal_conv1d_update",
        lambda: (conv_triton.causal_conv1d_update_triton(x[..., :1], conv_state.clone(), weight, bias),),
        lambda: (reference.causal_conv1d_update_ref(x[..., :1], conv_state.clone(), weight, bias),),
    )


def check_accuracy() -> bool:
    print(f"{'op':<28}{'dtype':<10}{'rel. error':>12}{'tolerance':>12}")
    all_ok = True
    for dtype in (torch.float32, torch.bfloat16):
        for name, run_triton, run_reference in accuracy_cases(dtype):
            errors = [
                (a.float() - e.float()).abs().max().item() / max(e.float().abs().max().item(), 1e-6)
                for a, e in zip(run_triton(), run_reference())
            ]
            ok = max(errors) <= TOLERANCE[dtype]
            all_ok &= ok
            verdict = "ok" if ok else "FAIL"
            print(f"{name:<28}{str(dtype)[6:]:<10}{max(errors):>12.2e}{TOLERANCE[dtype]:>12.0e}  {verdict}")
    return all_ok


def milliseconds(fn, repeats: int = 10) -> float:
    """Median time of `fn()` on the GPU after one warm-up call (compilation, allocations)."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def time_chunked_gdn() -> None:
    from hf_hybrid_cache.kernels.chunk_triton import chunk_gated_delta_rule_triton

    q, k, v, g, beta = gdn_inputs(1, 8192, 16, 32, 128, torch.bfloat16)
    every_1024 = tuple(range(1024, 8193, 1024))
    rows = {
        "triton": lambda: chunk_gated_delta_rule_triton(q, k, v, g, beta),
        "triton, 8 checkpoints": lambda: chunk_gated_delta_rule_triton(q, k, v, g, beta, checkpoint_offsets=every_1024),
        "pytorch path": lambda: chunk_gated_delta_rule_cpu(q, k, v, g, beta),
    }
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk
    except ImportError:
        fla_chunk = None
    if fla_chunk is not None:
        # transformers repeats q, k to the value heads before calling fla, so the timing includes that.
        def run_fla():
            q2, k2 = (x.repeat_interleave(2, dim=2) for x in (q, k))
            return fla_chunk(q2, k2, v, g, beta, output_final_state=True, use_qk_l2norm_in_kernel=True)

        rows["fla"] = run_fla
    print("\nchunked GDN, B=1 T=8192 Hk=16 Hv=32 K=V=128 bf16" + ("" if fla_chunk else " (fla not installed)"))
    for name, fn in rows.items():
        try:
            print(f"{name:<28}{milliseconds(fn):>10.2f} ms")
        except (RuntimeError, TypeError, ValueError) as error:  # e.g. an fla release with another signature
            print(f"{name:<28}  failed: {error}")


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU and triton; none found here. The CPU suite is `pytest tests/kernels`.")
        return 1
    torch.manual_seed(0)
    ok = check_accuracy()
    time_chunked_gdn()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
