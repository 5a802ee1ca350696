"""Mamba2's SSD scan in Triton: the chunked form with the states after the checkpoint offsets taken in the same
pass, and decode steps with the fp32 state updated in place.

One program per (batch row, head, tile of BP head-dim columns) walks the sequence chunk by chunk, keeping its
`[BP, N]` state tile in registers: inside a chunk the output is decay-masked attention (C B^T) over d x plus
the state's part, C S^T, decayed from the chunk's start; the state then moves to the chunk's end. The chunks
end every BT tokens and at each checkpoint offset (`chunk_bounds`), so a checkpoint state is a chunk-end
state, stored where the chunk table says.

Imports triton: load it lazily (see `dispatch.py`). Arguments are checked in `checks.py` first.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .launch import block_size, check_contiguous, check_device, dot_precision

CHUNK_SIZE = 64  # tokens per chunk at state sizes up to 64 (larger states: `chunk_config`)


def chunk_bounds(seq_len: int, checkpoint_offsets: tuple[int, ...], chunk_size: int) -> list[int]:
    """Where the chunks start and end: every `chunk_size` tokens and at each checkpoint offset, from 0 to seq_len."""
    return sorted({*range(0, seq_len, chunk_size), *checkpoint_offsets, seq_len})

# Head-dim columns per program of the decode step: B * H * P / BP programs for one token.
BLOCK_P = 32


@dataclass(frozen=True)
class ChunkConfig:
    """Tiles and launch options of the chunked kernel for a state size: the [block_p, N] state tile and the
    [chunk_size, N] B and C tiles stay in registers (benchmarks/compile_check.py)."""

    chunk_size: int
    block_p: int
    num_warps: int


def chunk_config(head_dim: int, state_size: int, dtype: torch.dtype) -> ChunkConfig:
    """Chosen with benchmarks/compile_check.py: no spill on sm_80-90 for half inputs up to N = 256, and for fp32
    inputs up to N = 64. fp32 inputs multiply in tf32x3, whose split operands take about three times the
    registers: from N = 128 on they spill (about 100 B at N = 128, kilobytes at 256), which costs speed only."""
    block_p = min(block_size(head_dim), 16)
    if state_size <= 64:
        return ChunkConfig(32 if dtype == torch.float32 else CHUNK_SIZE, block_p, 8)
    if state_size <= 128 and dtype != torch.float32:
        return ChunkConfig(32, block_p, 8)
    return ChunkConfig(16, block_p, 8)


@triton.jit
def _step_size(dt, bias, dt_min, dt_max):
    """softplus(dt + bias) (linear above 20, as torch's) clamped to [dt_min, dt_max], in fp32."""
    dt = dt + bias
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    return tl.minimum(tl.maximum(dt, dt_min), dt_max)


@triton.jit
def chunk_ssd_kernel(
    x, dt, A, B, C, D, dt_bias, initial_state, y, final_state, checkpoints, bounds, checkpoint_index,
    num_chunks, T, dt_min, dt_max,
    BATCH: tl.constexpr, H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
    BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INITIAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Grid: (cdiv(P, BP), BATCH * H). Chunk c covers tokens [bounds[c], bounds[c + 1]); after it the state goes
    to checkpoint slot checkpoint_index[c] when that is >= 0."""
    i_p, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_g = i_h // (H // G)
    o_p, o_n, o_t = i_p * BP + tl.arange(0, BP), tl.arange(0, BN), tl.arange(0, BT)
    m_p, m_n = o_p < P, o_n < N
    m_state = m_p[:, None] & m_n[None, :]
    o_state = (i_bh * P + o_p[:, None]) * N + o_n[None, :]
    b_a = tl.load(A + i_h).to(tl.float32)
    b_bias = tl.load(dt_bias + i_h).to(tl.float32) if HAS_BIAS else 0.0
    b_d = tl.load(D + i_h).to(tl.float32) if HAS_D else 0.0
    if HAS_INITIAL:
        b_s = tl.load(initial_state + o_state, mask=m_state, other=0.0).to(tl.float32)
    else:
        b_s = tl.zeros([BP, BN], dtype=tl.float32)

    for i_c in range(num_chunks):
        start = tl.load(bounds + i_c)
        end = tl.load(bounds + i_c + 1)
        o_tok = start + o_t
        m_t = o_tok < end
        b_dt = tl.load(dt + (i_b * T + o_tok) * H + i_h, mask=m_t, other=0.0).to(tl.float32)
        b_dt = tl.where(m_t, _step_size(b_dt, b_bias, dt_min, dt_max), 0.0)  # padding: no step, no decay
        b_cs = tl.cumsum(b_dt * b_a, axis=0)  # log decay from the chunk's start, [BT]
        m_tp = m_t[:, None] & m_p[None, :]
        m_tn = m_t[:, None] & m_n[None, :]
        b_x = tl.load(x + ((i_b * T + o_tok[:, None]) * H + i_h) * P + o_p[None, :], mask=m_tp, other=0.0).to(tl.float32)
        o_bc = ((i_b * T + o_tok[:, None]) * G + i_g) * N + o_n[None, :]
        b_B = tl.load(B + o_bc, mask=m_tn, other=0.0).to(tl.float32)
        b_C = tl.load(C + o_bc, mask=m_tn, other=0.0).to(tl.float32)
        b_xs = b_x * b_dt[:, None]

        # inside the chunk: y_i = sum_{j <= i} exp(cs_i - cs_j) (C_i . B_j) d_j x_j
        b_scores = tl.dot(b_C, tl.trans(b_B), input_precision=DOT_PRECISION)
        causal = o_t[:, None] >= o_t[None, :]
        b_scores = tl.where(causal, b_scores * tl.exp(tl.where(causal, b_cs[:, None] - b_cs[None, :], 0.0)), 0.0)
        b_y = tl.dot(b_scores, b_xs, input_precision=DOT_PRECISION)
        # the state before the chunk, decayed to each token: exp(cs_i) C_i S^T
        b_y += tl.dot(b_C, tl.trans(b_s), input_precision=DOT_PRECISION) * tl.exp(b_cs)[:, None]
        if HAS_D:
            b_y += b_d * b_x
        p_y = y + ((i_b * T + o_tok[:, None]) * H + i_h) * P + o_p[None, :]
        tl.store(p_y, b_y.to(p_y.dtype.element_ty), mask=m_tp)

        # the state after the chunk: S exp(cs_end) + sum_j exp(cs_end - cs_j) d_j x_j B_j^T
        b_total = tl.sum(b_dt * b_a, axis=0)
        b_to_end = tl.where(m_t, tl.exp(b_total - b_cs), 0.0)
        b_s = b_s * tl.exp(b_total) + tl.dot(tl.trans(b_xs * b_to_end[:, None]), b_B, input_precision=DOT_PRECISION)
        i_ck = tl.load(checkpoint_index + i_c)
        if i_ck >= 0:
            tl.store(checkpoints + i_ck * BATCH * H * P * N + o_state, b_s, mask=m_state)

    tl.store(final_state + o_state, b_s, mask=m_state)


@triton.jit
def recurrent_ssd_kernel(
    x, dt, A, B, C, D, dt_bias, state, y, T, dt_min, dt_max,
    H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """For each token: S = exp(d A) S + d x B^T; y = S C + D x. Grid: (cdiv(P, BP), B * H)."""
    i_p, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_g = i_h // (H // G)
    o_p, o_n = i_p * BP + tl.arange(0, BP), tl.arange(0, BN)
    m_p, m_n = o_p < P, o_n < N
    p_state = state + (i_bh * P + o_p[:, None]) * N + o_n[None, :]
    b_s = tl.load(p_state, mask=m_p[:, None] & m_n[None, :], other=0.0)
    b_a = tl.load(A + i_h).to(tl.float32)
    b_bias = tl.load(dt_bias + i_h).to(tl.float32) if HAS_BIAS else 0.0
    b_d = tl.load(D + i_h).to(tl.float32) if HAS_D else 0.0
    for i_t in range(T):
        o_bt = i_b * T + i_t
        b_dt = _step_size(tl.load(dt + o_bt * H + i_h).to(tl.float32), b_bias, dt_min, dt_max)
        b_x = tl.load(x + (o_bt * H + i_h) * P + o_p, mask=m_p, other=0.0).to(tl.float32)
        b_B = tl.load(B + (o_bt * G + i_g) * N + o_n, mask=m_n, other=0.0).to(tl.float32)
        b_C = tl.load(C + (o_bt * G + i_g) * N + o_n, mask=m_n, other=0.0).to(tl.float32)
        b_s = b_s * tl.exp(b_dt * b_a) + (b_dt * b_x)[:, None] * b_B[None, :]
        b_y = tl.sum(b_s * b_C[None, :], axis=1)
        if HAS_D:
            b_y += b_d * b_x
        p_y = y + (o_bt * H + i_h) * P + o_p
        tl.store(p_y, b_y.to(p_y.dtype.element_ty), mask=m_p)
    tl.store(p_state, b_s, mask=m_p[:, None] & m_n[None, :])


def _parameters(A, D, dt_bias):
    """A, D and dt_bias as the kernels take them: contiguous, an absent one replaced by A (never read then)."""
    return A.contiguous(), (A if D is None else D.contiguous()), (A if dt_bias is None else dt_bias.contiguous())


def chunk_ssd_triton(
    x, dt, A, B, C, D=None, dt_bias=None, dt_limit=(0.0, float("inf")), initial_state=None, checkpoint_offsets=()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton `chunk_ssd` (contract in `reference.chunk_ssd_ref`)."""
    check_device(chunk_ssd_kernel, x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias, initial_state=initial_state)
    x, dt, B, C = (t.contiguous() for t in (x, dt, B, C))
    batch_size, seq_len, num_heads, head_dim = x.shape
    num_groups, state_size = B.shape[2:]
    config = chunk_config(head_dim, state_size, x.dtype)
    bounds = chunk_bounds(seq_len, tuple(checkpoint_offsets), config.chunk_size)
    index = {offset: i for i, offset in enumerate(checkpoint_offsets)}
    checkpoint_index = [index.get(end, -1) for end in bounds[1:]]
    y = torch.empty_like(x)
    final_state = x.new_empty(batch_size, num_heads, head_dim, state_size, dtype=torch.float32)
    checkpoints = x.new_empty(len(checkpoint_offsets), *final_state.shape, dtype=torch.float32)
    A, D_, bias = _parameters(A, D, dt_bias)
    initial = final_state if initial_state is None else initial_state.float().contiguous()
    chunk_ssd_kernel[(triton.cdiv(head_dim, config.block_p), batch_size * num_heads)](
        x, dt, A, B, C, D_, bias, initial, y, final_state, checkpoints,
        torch.tensor(bounds, dtype=torch.int32, device=x.device),
        torch.tensor(checkpoint_index, dtype=torch.int32, device=x.device),
        len(bounds) - 1, seq_len, float(dt_limit[0]), float(dt_limit[1]),
        BATCH=batch_size, H=num_heads, G=num_groups, P=head_dim, N=state_size,
        BT=block_size(max(b - a for a, b in zip(bounds, bounds[1:]))), BP=config.block_p,
        BN=block_size(state_size), HAS_D=D is not None, HAS_BIAS=dt_bias is not None,
        HAS_INITIAL=initial_state is not None, DOT_PRECISION=dot_precision(x.dtype), num_warps=config.num_warps,
    )
    return y, final_state, checkpoints


def recurrent_ssd_triton(x, dt, A, B, C, D, dt_bias, dt_limit, state) -> torch.Tensor:
    """Triton `recurrent_ssd` (contract in `reference.recurrent_ssd_ref`). `state` must be contiguous: it is
    written in place, so it is never copied."""
    check_device(recurrent_ssd_kernel, x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias, state=state)
    check_contiguous(state=state)
    x, dt, B, C = (t.contiguous() for t in (x, dt, B, C))
    batch_size, seq_len, num_heads, head_dim = x.shape
    num_groups, state_size = B.shape[2:]
    y = torch.empty_like(x)
    A, D_, bias = _parameters(A, D, dt_bias)
    block_p = min(block_size(head_dim), BLOCK_P)
    recurrent_ssd_kernel[(triton.cdiv(head_dim, block_p), batch_size * num_heads)](
        x, dt, A, B, C, D_, bias, state, y, seq_len, float(dt_limit[0]), float(dt_limit[1]),
        H=num_heads, G=num_groups, P=head_dim, N=state_size, BP=block_p, BN=block_size(state_size),
        HAS_D=D is not None, HAS_BIAS=dt_bias is not None,
    )
    return y
