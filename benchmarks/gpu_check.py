"""GPU check in one go (under 5 minutes on one GPU): every Triton kernel against its reference, chunked GDN and
decode timings beside flash-linear-attention (fla), and end-to-end TTFT cold vs 7/8 cached.

    python benchmarks/gpu_check.py [--fla-wheels DIR]     # on a CUDA machine
    TRITON_INTERPRET=1 python benchmarks/gpu_check.py --smoke   # the same plumbing on CPU, tiny sizes

1. Accuracy: max |error| / max |reference| of each kernel, fp32 and bf16, with and without an initial state,
   checkpoints at and off multiples of 64, GQA 1 and 2. Exits 1 if one exceeds its tolerance.
2. Chunked GDN at Qwen3-Next / Qwen3.5 shapes (B 1, Hk 16, Hv 32, K = V = 128, bf16) for T = 2k, 8k, 32k:
   ours without checkpoints, with one every 560 and every 64 tokens, and fla's `chunk_gated_delta_rule`
   (target: every 560 >= 0.9 x fla's speed without checkpoints).
3. Decode (T = 1, B = 1 and 32): our recurrent kernel vs fla's `fused_recurrent_gated_delta_rule` (target >= fla).
4. End to end: a Qwen3.5 of real layer shapes (hidden 2048, 4 layers: 3 GDN + 1 attention, bf16, random
   weights) patched, TTFT of an 8k prompt cold vs with 7/8 of it cached.
fla is imported if installed; else installed from `--fla-wheels` (a folder of wheels, no network needed).
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_hybrid_cache.kernels import reference  # noqa: E402

# Max |error| / max |reference| allowed; bf16 inputs round q, k, v to 8 bits of mantissa.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def gdn_inputs(batch_size, seq_len, num_k_heads, num_v_heads, head_dim, dtype, device):
    q, k = (torch.randn(batch_size, seq_len, num_k_heads, head_dim, device=device, dtype=dtype) for _ in range(2))
    v = torch.randn(batch_size, seq_len, num_v_heads, head_dim, device=device, dtype=dtype)
    g = -0.1 * torch.rand(batch_size, seq_len, num_v_heads, device=device)
    beta = torch.rand(batch_size, seq_len, num_v_heads, device=device).to(dtype)
    return q, k, v, g, beta


def accuracy_cases(dtype, device, seq_len):
    """(name, triton call, reference call); each call returns a tuple of tensors."""
    from hf_hybrid_cache.kernels import conv_triton
    from hf_hybrid_cache.kernels.chunk_triton import chunk_gated_delta_rule_triton
    from hf_hybrid_cache.kernels.recurrent_triton import recurrent_gated_delta_rule_triton

    head_dim = 128 if device == "cuda" else 32
    offsets = tuple(sorted({1, 63, 64, 65, seq_len // 2, seq_len - 1, seq_len}))
    for num_v_heads, use_h0 in ((4, True), (8, False)):  # GQA ratio 1 with a start state, 2 without
        q, k, v, g, beta = gdn_inputs(2, seq_len, 4, num_v_heads, head_dim, dtype, device)
        h0 = torch.randn(2, num_v_heads, head_dim, head_dim, device=device) if use_h0 else None
        kwargs = dict(initial_state=h0, checkpoint_offsets=offsets)
        yield (
            f"chunk_gdn gqa{num_v_heads // 4}{' h0' if use_h0 else ''}",
            lambda: chunk_gated_delta_rule_triton(q, k, v, g, beta, **kwargs),
            lambda: reference.chunk_gated_delta_rule_ref(q, k, v, g, beta, **kwargs),
        )
    state = torch.randn(2, num_v_heads, head_dim, head_dim, device=device)
    step = [x[:, :2] for x in (q, k, v, g, beta)]
    yield (
        "recurrent_gdn",
        lambda: (recurrent_gated_delta_rule_triton(*step, state=state.clone()),),
        lambda: (reference.recurrent_gated_delta_rule_ref(*step, state=state.clone()),),
    )
    dim = 1024 if device == "cuda" else 96
    x, weight, bias = (torch.randn(*shape, device=device, dtype=dtype) for shape in ((2, dim, seq_len), (dim, 4), (dim,)))
    conv_state = torch.randn(2, dim, 4, device=device, dtype=dtype)
    conv_kwargs = dict(conv_state=conv_state, checkpoint_offsets=(1, 3, 64, seq_len - 1))
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


def check_accuracy(device, seq_len) -> bool:
    print(f"{'kernel':<28}{'dtype':<10}{'rel. error':>12}{'tolerance':>12}")
    all_ok = True
    for dtype in (torch.float32, torch.bfloat16):
        for name, run_triton, run_reference in accuracy_cases(dtype, device, seq_len):
            errors = [
                (a.float() - e.float()).abs().max().item() / max(e.float().abs().max().item(), 1e-6)
                for a, e in zip(run_triton(), run_reference())
            ]
            ok = max(errors) <= TOLERANCE[dtype]
            all_ok &= ok
            print(f"{name:<28}{str(dtype)[6:]:<10}{max(errors):>12.2e}{TOLERANCE[dtype]:>12.0e}  {'ok' if ok else 'FAIL'}")
    return all_ok


def milliseconds(fn, repeats: int = 10) -> float:
    """Median time of `fn()` after one warm-up call (compilation, allocations); CUDA events on a GPU."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1000)
    return sorted(times)[len(times) // 2]


def load_fla(wheels: Path | None):
    """fla's (chunk, fused recurrent) gated delta rule, installed from `wheels` first if needed; None if absent."""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    except ImportError:
        if wheels is None:
            return None
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels),
                        "flash-linear-attention"], check=False)
        try:
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
        except ImportError:
            return None
    return chunk_gated_delta_rule, fused_recurrent_gated_delta_rule


def time_chunked_gdn(device, seq_lens, fla) -> None:
    from hf_hybrid_cache.kernels.chunk_triton import chunk_gated_delta_rule_triton

    print(f"\nchunked GDN, B=1 Hk=16 Hv=32 K=V=128 bf16, ms{'' if fla else ' (fla not installed)'}")
    print(f"{'T':>6}{'ours':>9}{'ckpt/560':>10}{'ckpt/64':>9}{'fla':>9}{'fla / ours@560':>16}")
    for seq_len in seq_lens:
        q, k, v, g, beta = gdn_inputs(1, seq_len, 16, 32, 128, torch.bfloat16, device)
        times = {
            name: milliseconds(lambda: chunk_gated_delta_rule_triton(q, k, v, g, beta, checkpoint_offsets=offsets))
            for name, offsets in (("ours", ()), ("560", range(560, seq_len + 1, 560)), ("64", range(64, seq_len + 1, 64)))
        }
        line = f"{seq_len:>6}{times['ours']:>9.2f}{times['560']:>10.2f}{times['64']:>9.2f}"
        if fla:
            # fla takes q, k with as many heads as v (transformers repeats them before calling it).
            q2, k2 = (x.repeat_interleave(2, dim=2) for x in (q, k))
            fla_ms = milliseconds(lambda: fla[0](q2, k2, v, g, beta, output_final_state=True, use_qk_l2norm_in_kernel=True))
            line += f"{fla_ms:>9.2f}{fla_ms / times['560']:>15.2f}x"
        print(line)


def time_decode(device, fla) -> None:
    from hf_hybrid_cache.kernels.recurrent_triton import recurrent_gated_delta_rule_triton

    print(f"\ndecode step (T=1), Hk=16 Hv=32 K=V=128 bf16, ms{'' if fla else ' (fla not installed)'}")
    print(f"{'B':>4}{'ours':>9}{'fla':>9}{'fla / ours':>12}")
    for batch_size in (1, 32):
        q, k, v, g, beta = gdn_inputs(batch_size, 1, 16, 32, 128, torch.bfloat16, device)
        state = torch.zeros(batch_size, 32, 128, 128, device=device)
        ours = milliseconds(lambda: recurrent_gated_delta_rule_triton(q, k, v, g, beta, state=state))
        line = f"{batch_size:>4}{ours:>9.3f}"
        if fla:
            q2, k2 = (x.repeat_interleave(2, dim=2) for x in (q, k))
            fla_ms = milliseconds(lambda: fla[1](q2, k2, v, g, beta, initial_state=state, output_final_state=True,
                                                 use_qk_l2norm_in_kernel=True))
            line += f"{fla_ms:>9.3f}{fla_ms / ours:>11.2f}x"
        print(line)


def time_end_to_end(device, prompt_len, hidden_size) -> None:
    import hf_hybrid_cache as hhc
    from hf_hybrid_cache.tiny import tiny_model

    # Real Qwen3.5 GDN / attention shapes (16 key heads, 32 value heads of 128; 16 query heads, 2 K/V heads of 256).
    heads = dict(linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128, linear_value_head_dim=128,
                 num_attention_heads=16, num_key_value_heads=2, head_dim=256) if device == "cuda" else {}
    model = tiny_model("qwen3_5", num_hidden_layers=4, hidden_size=hidden_size, intermediate_size=3 * hidden_size, **heads)
    model = hhc.patch(model.to(device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32))
    prompt = torch.randint(3, 250, (1, prompt_len), device=device)
    cached = prompt_len // 8 * 7
    store = hhc.PrefixStore(block_size=64, mamba_cache_mode="align", max_bytes=8 << 30)
    model.generate(prompt[:, : cached + 1], cache=hhc.HybridPrefixCache(model, store=store), max_new_tokens=1)

    def ttft(cache):
        model.generate(prompt, max_new_tokens=1, **({"cache": cache()} if cache else {}))

    cold = milliseconds(lambda: ttft(None), repeats=5)
    hit = milliseconds(lambda: ttft(lambda: hhc.HybridPrefixCache(model, store=store)), repeats=5)
    print(f"\nend to end, Qwen3.5 shapes (hidden {hidden_size}, 4 layers), {prompt_len}-token prompt, {cached} cached:")
    print(f"cold {cold:.1f} ms, 7/8 cached {hit:.1f} ms: {cold / hit:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fla-wheels", type=Path, default=None, help="folder with fla's wheel, when not installed")
    parser.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, tiny sizes: checks the script only")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.smoke:
        ok = check_accuracy("cpu", seq_len=130)
        time_end_to_end("cpu", prompt_len=256, hidden_size=64)
        return 0 if ok else 1
    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU; none found here (try --smoke with TRITON_INTERPRET=1).")
        return 1
    fla = load_fla(args.fla_wheels)
    ok = check_accuracy("cuda", seq_len=1000)
    time_chunked_gdn("cuda", (2048, 8192, 32768), fla)
    time_decode("cuda", fla)
    time_end_to_end("cuda", prompt_len=8192, hidden_size=2048)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
