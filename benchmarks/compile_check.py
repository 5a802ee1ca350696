"""Compiles every Triton kernel in `kernels/` ahead of time for sm_80, sm_86, sm_89 and sm_90, with the tiles and
launch options its launcher would pick on that architecture, and reports registers, spills (the stack the
kernel needs) and shared memory per block. No GPU needed: triton's compiler and the wheel's ptxas and cuobjdump
do it all on a CPU.

    .venv/bin/python benchmarks/compile_check.py [--shapes qwen3_next qwen3_5 test lfm2 nemotron_h granite_4_h falcon_h1 ssd_test]
        [--archs 80 86 89 90] [--json]

A row is clean when it compiled, spills at most 64 bytes and its shared memory fits the architecture's
per-block limit. Exits 1 if any row is not clean.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Compiling needs the real triton language, not the interpreter the test suite turns on.
os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_hybrid_cache.kernels import chunk_triton, conv_triton, launch, recurrent_triton, scan_triton, ssd_triton  # noqa: E402

ARCHS = (80, 86, 89, 90)
SHARED_LIMIT = {80: 163 << 10, 86: 99 << 10, 89: 99 << 10, 90: 227 << 10}  # bytes per block
MAX_SPILL_BYTES = 64
# (key heads, value heads, K, V, conv channels, dtype): GDN layers of Qwen3-Next-80B and Qwen3.5 (whose
# larger checkpoints have more value heads per key head), and the kernel tests' odd sizes.
SHAPES = {
    "qwen3_next": (16, 32, 128, 128, 8192, "bf16"),
    "qwen3_5": (16, 64, 128, 128, 12288, "bf16"),
    "test": (1, 2, 24, 80, 128, "fp32"),
}
# The same kernels with a decay per key channel (KDA): Kimi-Linear-48B's delta attention (32 heads of 128, its conv
# without bias) and the odd test sizes.
KDA_SHAPES = {
    "kimi_linear": (32, 32, 128, 128, 12288, "bf16"),
    "kda_test": (1, 2, 24, 80, 128, "fp32"),
}
# (conv width, dtype) of the short convs our one-pass adapters run with no SiLU and no bias (LFM2 / LFM2-MoE
# checkpoints: conv_L_cache 3, conv_bias false); the channel count is a runtime argument.
SHORT_CONV_SHAPES = {"lfm2": (3, "bf16")}
# (heads, head dim, groups, state size, dtype) of the Mamba2 layers: Nemotron-H-8B (transformers' config defaults),
# Granite 4.0-H-Small (its published config) and Falcon-H1-7B (d_ssm 3072 over 24 heads of 128, state 256).
SSD_SHAPES = {
    "nemotron_h": (128, 64, 8, 128, "bf16"),
    "granite_4_h": (128, 64, 1, 128, "bf16"),
    "falcon_h1": (24, 128, 1, 256, "bf16"),
    "ssd_test": (2, 24, 2, 64, "fp32"),  # fp32 and an odd head dim (fp32 from N = 128 on spills: see chunk_config)
}
# (channels, groups of B and C, state size, dtype) of Mamba (v1) layers: Jamba-v0.1 (hidden 4096, expand 2, d_state
# 16), Zamba-7B (hidden 3712, expand 2, 16 heads), and odd test sizes; the conv (width 4, SiLU, bias) is the GDN
# shapes' own.
SCAN_SHAPES = {"jamba": (8192, 1, 16, "bf16"), "zamba": (7424, 16, 16, "bf16"), "scan_test": (48, 3, 12, "fp32")}


@dataclass
class Spec:
    """One kernel launch as its launcher configures it: argument types, constexpr values, options."""

    name: str
    fn: object
    types: dict  # non-constexpr argument -> triton type ("*bf16", "i32", ...)
    constexprs: dict  # constexpr argument -> value (None for an absent optional tensor)
    num_warps: int
    num_stages: int

    @property
    def config(self) -> str:
        tiles = {k: v for k, v in self.constexprs.items() if k.startswith("B") and k not in ("B",)}
        return " ".join(f"{k}={v}" for k, v in tiles.items()) + f" warps={self.num_warps} stages={self.num_stages}"


def specs(shape: str, arch: int):
    """Every kernel launch of every op at `shape` on `arch`, configured as the launchers configure it."""
    if shape in SHORT_CONV_SHAPES:
        width, dtype = SHORT_CONV_SHAPES[shape]
        yield from conv_specs(f"*{dtype}", width, silu=False, bias=False)
        return
    if shape in SSD_SHAPES:  # their conv (width 4, SiLU, bias) is the GDN shapes' own, channels a runtime argument
        yield from ssd_specs(*SSD_SHAPES[shape])
        return
    if shape in SCAN_SHAPES:
        yield from scan_specs(*SCAN_SHAPES[shape])
        return
    per_channel = shape in KDA_SHAPES
    num_k_heads, num_v_heads, k_dim, v_dim, conv_dim, dtype = (KDA_SHAPES if per_channel else SHAPES)[shape]
    data = f"*{dtype}"
    dot = launch.dot_precision(_torch_dtype(dtype))
    config = chunk_triton.configs(k_dim, v_dim, _torch_dtype(dtype), arch)
    opts = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    dims = dict(HK=num_k_heads, HV=num_v_heads, K=k_dim, BT=chunk_triton.CHUNK_SIZE, DOT_PRECISION=dot)
    tiles = dict(V=v_dim, BK=config.block_k, BV=config.block_v, PER_CHANNEL=per_channel)
    fp32 = "*fp32"
    yield Spec("l2norm", chunk_triton.l2norm_kernel, dict(x=data, y=fp32, num_rows="i32"),
               dict(K=k_dim, BK=launch.block_size(k_dim), BR=16), **opts)
    if per_channel:
        yield Spec("kda_kkt", chunk_triton.kda_kkt_kernel,
                   dict(q=fp32, k=fp32, g=fp32, beta=data, g_cum=fp32, a=fp32, scores=fp32, T="i32"),
                   dict(HK=num_k_heads, HV=num_v_heads, K=k_dim, BT=chunk_triton.CHUNK_SIZE, BK=config.block_k), **opts)
    else:
        yield Spec("chunk_kkt", chunk_triton.chunk_kkt_kernel, dict(k=fp32, g=fp32, beta=data, g_cum=fp32, a=fp32, T="i32"),
                   dict(BK=config.block_k, **dims), **opts)
    yield Spec("chunk_solve", chunk_triton.chunk_solve_kernel, dict(a=fp32, a_inv=fp32, T="i32"),
               dict(HV=num_v_heads, BT=chunk_triton.CHUNK_SIZE, BC=chunk_triton.SOLVE_BLOCK, DOT_PRECISION=dot), **opts)
    yield Spec("chunk_wy", chunk_triton.chunk_wy_kernel,
               dict(k=fp32, v=data, beta=data, g_cum=fp32, a_inv=fp32, w=fp32, u=fp32, T="i32"), dict(**tiles, **dims), **opts)
    for initial_state in (True, False):
        yield Spec(f"chunk_state{'' if initial_state else ' (no h0)'}", chunk_triton.chunk_state_kernel,
                   dict(k=fp32, w=fp32, u=fp32, g_cum=fp32, **({"h0": fp32} if initial_state else {}), h=fp32,
                        v_new=fp32, ht=fp32, T="i32"),
                   dict(**({} if initial_state else {"h0": None}), BK=launch.block_size(k_dim), BV=config.state_block_v,
                        V=v_dim, **dims, USE_INITIAL_STATE=initial_state, PER_CHANNEL=per_channel),
                   num_warps=config.state_num_warps, num_stages=config.state_num_stages)
    scores = {"scores": fp32} if per_channel else {}
    yield Spec("chunk_output", chunk_triton.chunk_output_kernel,
               dict(q=fp32, k=fp32, g_cum=fp32, **scores, h=fp32, v_new=fp32, o=data, scale="fp32", T="i32"),
               dict(**({} if per_channel else {"scores": None}), **tiles, **dims), **opts)
    yield Spec("chunk_checkpoint", chunk_triton.chunk_checkpoint_kernel,
               dict(k=fp32, g_cum=fp32, h=fp32, v_new=fp32, ckpt_offsets="*i32", h_ckpt=fp32, T="i32", B="i32"),
               dict(**tiles, **dims), **opts)
    yield Spec("recurrent", recurrent_triton.recurrent_gated_delta_rule_kernel,
               dict(q=data, k=data, v=data, g=fp32, beta=data, state=fp32, o=data, scale="fp32", T="i32"),
               dict(HK=num_k_heads, HV=num_v_heads, K=k_dim, V=v_dim, BK=launch.block_size(k_dim),
                    BV=min(launch.block_size(v_dim), recurrent_triton.BLOCK_V), USE_QK_L2NORM=True,
                    PER_CHANNEL=per_channel), num_warps=4, num_stages=3)
    yield from conv_specs(data, width=4, silu=True, bias=not per_channel)


def ssd_specs(num_heads: int, head_dim: int, num_groups: int, state_size: int, dtype: str):
    """Mamba2's SSD scan: the chunked kernel (with and without an initial state) and the decode step."""
    data, fp32 = f"*{dtype}", "*fp32"
    config = ssd_triton.chunk_config(head_dim, state_size, _torch_dtype(dtype))
    dims = dict(H=num_heads, G=num_groups, P=head_dim, N=state_size, BN=launch.block_size(state_size), HAS_D=True,
                HAS_BIAS=True)
    tensors = dict(x=data, dt=data, A=fp32, B=data, C=data, D=fp32, dt_bias=fp32)
    for initial_state in (True, False):
        yield Spec(f"ssd_chunk{'' if initial_state else ' (no h0)'}", ssd_triton.chunk_ssd_kernel,
                   dict(**tensors, initial_state=fp32, y=data, final_state=fp32, checkpoints=fp32, bounds="*i32",
                        checkpoint_index="*i32", num_chunks="i32", T="i32", dt_min="fp32", dt_max="fp32"),
                   dict(BATCH=1, BT=config.chunk_size, BP=config.block_p, HAS_INITIAL=initial_state,
                        DOT_PRECISION=launch.dot_precision(_torch_dtype(dtype)), **dims),
                   num_warps=config.num_warps, num_stages=1)
    yield Spec("ssd_recurrent", ssd_triton.recurrent_ssd_kernel,
               dict(**tensors, state=fp32, y=data, T="i32", dt_min="fp32", dt_max="fp32"),
               dict(BP=min(launch.block_size(head_dim), ssd_triton.BLOCK_P), **dims), num_warps=4, num_stages=3)


def scan_specs(dim: int, num_groups: int, state_size: int, dtype: str):
    """Mamba's selective scan: with and without an initial state (a prefill with checkpoints; a decode step reads and
    writes its state in place)."""
    data, fp32 = f"*{dtype}", "*fp32"
    tensors = dict(x=data, dt=data, A=fp32, B=data, C=data, D=fp32, dt_bias=fp32)
    for initial_state in (True, False):
        yield Spec(f"selective_scan{'' if initial_state else ' (no h0)'}", scan_triton.selective_scan_kernel,
                   dict(**tensors, **({"h0": fp32} if initial_state else {}), y=data, ht=fp32, checkpoint_of_token="*i32",
                        h_ckpt=fp32, T="i32", BATCH="i32"),
                   dict(**({} if initial_state else {"h0": None}), DIM=dim, G=num_groups, N=state_size, BD=scan_triton.BLOCK_D,
                        BN=launch.block_size(state_size), HAS_D=True, HAS_BIAS=True, HAS_INITIAL=initial_state,
                        HAS_CHECKPOINTS=True),
                   num_warps=4, num_stages=3)


def conv_specs(data: str, width: int, silu: bool, bias: bool):
    """The causal conv's launches (prefill, checkpoint states, decode) for inputs of triton type `data`."""
    conv = dict(x=data, weight=data, **({"bias": data} if bias else {}), conv_state=data, out=data, T="i32", D="i32")
    absent = {} if bias else {"bias": None}
    yield Spec("conv", conv_triton.causal_conv1d_kernel, conv,
               dict(**absent, W=width, BD=conv_triton.BLOCK_D, BT=conv_triton.BLOCK_T, USE_SILU=silu, HAS_BIAS=bias,
                    HAS_STATE=True),
               num_warps=4, num_stages=3)
    yield Spec("conv_states", conv_triton.causal_conv1d_states_kernel,
               dict(x=data, conv_state=data, ends="*i32", states=data, B="i32", T="i32", D="i32"),
               dict(W=width, BD=conv_triton.BLOCK_D, BW=triton.next_power_of_2(width), HAS_STATE=True), num_warps=4, num_stages=3)
    yield Spec("conv_update", conv_triton.causal_conv1d_update_kernel, conv,
               dict(**absent, W=width, BD=conv_triton.BLOCK_D, BW=triton.next_power_of_2(width), USE_SILU=silu,
                    HAS_BIAS=bias),
               num_warps=4, num_stages=3)


def _torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


def _jit_function(kernel):
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn  # @triton.heuristics / @triton.autotune wrap it
    return kernel


def compile_row(spec: Spec, shape: str, arch: int) -> dict:
    fn = _jit_function(spec.fn)
    signature = {name: spec.types.get(name, "constexpr") for name in fn.arg_names}
    missing = [name for name in fn.arg_names if name not in spec.types and name not in spec.constexprs]
    row = dict(kernel=spec.name, arch=f"sm_{arch}", shape=shape, config=spec.config,
               registers=None, spill_bytes=None, shared_bytes=None, error=None)
    if missing:
        row["error"] = f"compile_check does not describe arguments {missing}"
        return row
    constexprs = {(fn.arg_names.index(name),): value for name, value in spec.constexprs.items()}
    try:
        compiled = triton.compile(
            ASTSource(fn, signature, constexprs=constexprs),
            target=GPUTarget("cuda", arch, 32),
            options=dict(num_warps=spec.num_warps, num_stages=spec.num_stages),
        )
    except Exception as error:  # noqa: BLE001 - reported in the row
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
        return row
    row["shared_bytes"] = compiled.metadata.shared
    row["registers"], row["spill_bytes"] = _resource_usage(compiled.asm["cubin"])
    return row


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, stack bytes) from the wheel's cuobjdump -res-usage."""
    import triton.backends.nvidia as nvidia

    cuobjdump = Path(nvidia.__file__).parent / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        report = subprocess.run([str(cuobjdump), "-res-usage", file.name], capture_output=True, text=True, check=True).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+)", report)
    return int(usage.group(1)), int(usage.group(2))


def is_clean(row: dict) -> bool:
    limit = SHARED_LIMIT[int(row["arch"][3:])]
    return row["error"] is None and row["spill_bytes"] <= MAX_SPILL_BYTES and row["shared_bytes"] <= limit


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    every_shape = [*SHAPES, *KDA_SHAPES, *SHORT_CONV_SHAPES, *SSD_SHAPES, *SCAN_SHAPES]
    parser.add_argument("--shapes", nargs="+", choices=every_shape, default=every_shape)
    parser.add_argument("--archs", nargs="+", type=int, choices=ARCHS, default=list(ARCHS))
    parser.add_argument("--kernels", nargs="+", default=None, help="only these kernels (names as in the table)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows instead of the table")
    args = parser.parse_args(argv)
    rows = [
        compile_row(spec, shape, arch)
        for shape in args.shapes
        for arch in args.archs
        for spec in specs(shape, arch)
        if args.kernels is None or spec.name.split()[0] in args.kernels
    ]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'kernel':<22s}{'arch':<7s}{'shape':<12s}{'regs':>5s}{'spill B':>9s}{'shared KiB':>12s}  {'clean':<6s}config")
        for row in rows:
            if row["error"]:
                print(f"{row['kernel']:<22s}{row['arch']:<7s}{row['shape']:<12s}  ERROR {row['error']}")
                continue
            print(f"{row['kernel']:<22s}{row['arch']:<7s}{row['shape']:<12s}{row['registers']:>5d}{row['spill_bytes']:>9d}"
                  f"{row['shared_bytes'] / 1024:>12.1f}  {'yes' if is_clean(row) else 'NO':<6s}{row['config']}")
        print(f"\n{sum(map(is_clean, rows))} of {len(rows)} clean "
              f"(spill <= {MAX_SPILL_BYTES} B, shared within the per-block limit)")
    return 0 if all(map(is_clean, rows)) else 1


if __name__ == "__main__":
    sys.exit(main())
