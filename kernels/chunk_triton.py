"""Chunked gated delta rule forward in Triton, with the states at arbitrary checkpoint offsets in one pass, with
a log decay per head (Gated-DeltaNet) or per key channel (KDA: `PER_CHANNEL`, G then `[BT, K]` per chunk).

Decomposed as flash-linear-attention decomposes it, so that no program holds more than a few `[64, 64]`
tiles and only one kernel walks the chunks in order:
1. `l2norm_kernel`: q and k rows L2-normalised in fp32 (when asked).
2. `chunk_kkt_kernel` (chunk-parallel): G, the within-chunk cumulative log decay, and the strictly lower
   A[i, j] = beta_i exp(G_i - G_j) k_i . k_j. Per channel, `kda_kkt_kernel` instead: A[i, j] = beta_i
   sum_K k_i k_j exp(G_i - G_j) and the causal scores sum_K q_i k_j exp(G_i - G_j), column by column
   (exp(G_i) exp(-G_j) as two matmul operands would overflow under strong decays).
3. `chunk_solve_kernel` (chunk-parallel): (I + A)^-1, blocked: 16 x 16 diagonal blocks by forward
   substitution, the blocks below them by products of those.
4. `chunk_wy_kernel` (chunk-parallel): w = (I + A)^-1 diag(beta exp(G)) K and u = (I + A)^-1 diag(beta) V.
5. `chunk_state_kernel` (sequential over chunks): carries the state S only; stores each chunk's start state
   (fp32) and the values the chunk writes, v_new = u - w S.
6. `chunk_output_kernel` (chunk-parallel): o = scale (exp(G) q S_c + (causal, decayed q k^T) v_new); per
   channel, (q * exp(G)) S_c + scores v_new.
7. `chunk_checkpoint_kernel` (parallel over checkpoints): the state after n tokens of chunk c, from S_c and the
   chunk's first n tokens, for any n.
Imports triton: load it lazily (see `dispatch.py`). Arguments are checked in `checks.py`; tile sizes and
launch options per GPU architecture come from `configs` (one set in the interpreter).
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .launch import block_size, check_device, dot_precision

CHUNK_SIZE = 64  # the solve kernel is written for 4 blocks of 16
SOLVE_BLOCK = 16


@dataclass(frozen=True)
class ChunkConfig:
    """Tiles and launch options of the chunk kernels for one architecture."""

    block_k: int  # K tile of the chunk-parallel kernels
    block_v: int  # V tile of the chunk-parallel kernels
    num_warps: int
    num_stages: int
    state_block_v: int  # V tile of the sequential kernel, which holds all of K
    state_num_warps: int
    state_num_stages: int


def configs(head_k_dim: int, head_v_dim: int, dtype: torch.dtype, arch: int | None) -> ChunkConfig:
    """The tiles for heads of `head_k_dim` x `head_v_dim` on compute capability `arch` (80 for sm_80; None in
    the interpreter), chosen with `benchmarks/compile_check.py` so that at K = V = 128 no kernel spills more
    than 64 bytes nor exceeds the architecture's shared memory per block.

    8 warps: a `[64, 64]` fp32 tile then takes 16 registers a thread, not 32, and the chunk-parallel kernels
    (which hold three or four) stay under 255 without spilling. The sequential kernel holds a `[K, 32]` fp32
    state and a `[64, K]` fp32 w tile; a second pipelining stage of its loads takes 104 KiB of shared memory,
    over the 99 KiB of sm_86 / sm_89, so those get one stage. fp32 inputs multiply in tf32x3 (`launch.dot_precision`),
    whose split operands take three times the registers: their chunk-parallel tiles are 32 wide.
    """
    tile = 32 if dtype == torch.float32 else 64
    bk, bv, state_bv = min(tile, block_size(head_k_dim)), min(tile, block_size(head_v_dim)), min(32, block_size(head_v_dim))
    if arch is None:
        return ChunkConfig(bk, bv, num_warps=4, num_stages=1, state_block_v=state_bv, state_num_warps=4, state_num_stages=1)
    return ChunkConfig(bk, bv, num_warps=8, num_stages=2, state_block_v=state_bv, state_num_warps=8,
                       state_num_stages=1 if arch in (86, 89) else 2)


@triton.jit
def l2norm_kernel(x, y, num_rows, K: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr):
    """y = x / sqrt(sum(x^2) + 1e-6) per row of K (the eps of `reference.l2_normalize`), in fp32. Grid: (cdiv(rows, BR),)."""
    o_r, o_k = tl.program_id(0) * BR + tl.arange(0, BR), tl.arange(0, BK)
    m = (o_r < num_rows)[:, None] & (o_k < K)[None, :]
    b_x = tl.load(x + o_r[:, None] * K + o_k[None, :], mask=m, other=0.0).to(tl.float32)
    b_y = b_x * tl.rsqrt(tl.sum(b_x * b_x, axis=1) + 1e-6)[:, None]
    tl.store(y + o_r[:, None] * K + o_k[None, :], b_y, mask=m)


@triton.jit
def chunk_kkt_kernel(
    k, g, beta, g_cum, a, T, HK: tl.constexpr, HV: tl.constexpr, K: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """G = cumsum(g) within the chunk; a[t, j] = beta_t exp(G_t - G_j) k_t . k_j for j < t, else 0.

    `a` `[B, T, HV, BT]` fp32 (row t holds its chunk's columns j). Grid: (num_chunks, B * HV).
    """
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // HV, i_bh % HV
    i_hk = i_h // (HV // HK)
    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    m_t = o_t < T
    o_bth = (i_b * T + o_t) * HV + i_h

    # Padded tokens load k = 0, beta = 0, g = 0: they neither read nor write the state.
    b_g = tl.cumsum(tl.load(g + o_bth, mask=m_t, other=0.0).to(tl.float32), axis=0)
    b_beta = tl.load(beta + o_bth, mask=m_t, other=0.0).to(tl.float32)
    b_a = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        p_k = k + ((i_b * T + o_t[:, None]) * HK + i_hk) * K + o_k[None, :]
        b_k = tl.load(p_k, mask=m_t[:, None] & (o_k < K)[None, :], other=0.0).to(tl.float32)
        b_a += tl.dot(b_k, tl.trans(b_k), input_precision=DOT_PRECISION)
    # where() before exp: exp(G_t - G_j) overflows for j > t and must not reach the product.
    m_lower = o_i[:, None] > o_i[None, :]
    b_a = tl.where(m_lower, b_a * b_beta[:, None] * tl.exp(tl.where(m_lower, b_g[:, None] - b_g[None, :], 0.0)), 0.0)
    tl.store(a + o_bth[:, None] * BT + o_i[None, :], b_a, mask=m_t[:, None])
    tl.store(g_cum + o_bth, b_g, mask=m_t)


@triton.jit
def kda_kkt_kernel(
    q, k, g, beta, g_cum, a, scores, T, HK: tl.constexpr, HV: tl.constexpr, K: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr,
):
    """Per key channel: G = cumsum(g) within the chunk (`g_cum` `[B, T, HV, K]`);
    a[t, j] = beta_t sum_K k_t k_j exp(G_t - G_j) for j < t, else 0; scores[t, j] = sum_K q_t k_j exp(G_t - G_j)
    for j <= t, else 0. `a`, `scores` `[B, T, HV, BT]` fp32. Grid: (num_chunks, B * HV).

    One column j at a time: only exp of G_t - G_j for t >= j (<= 0) is ever taken.
    """
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // HV, i_bh % HV
    i_hk = i_h // (HV // HK)
    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    m_t = o_t < T
    o_bth = (i_b * T + o_t) * HV + i_h

    b_a = tl.zeros([BT, BT], dtype=tl.float32)
    b_s = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        o_btk = ((i_b * T + o_t[:, None]) * HK + i_hk) * K + o_k[None, :]
        b_k = tl.load(k + o_btk, mask=m_tk, other=0.0).to(tl.float32)
        b_q = tl.load(q + o_btk, mask=m_tk, other=0.0).to(tl.float32)
        # Padded tokens load k = 0, g = 0: they neither read nor write the state.
        p_g = o_bth[:, None] * K + o_k[None, :]
        b_g = tl.cumsum(tl.load(g + p_g, mask=m_tk, other=0.0).to(tl.float32), axis=0)
        tl.store(g_cum + p_g, b_g, mask=m_tk)
        for j in range(BT):
            m_row = (o_i == j)[:, None]
            b_kj = tl.sum(tl.where(m_row, b_k, 0.0), axis=0)
            b_gj = tl.sum(tl.where(m_row, b_g, 0.0), axis=0)
            m_below = (o_i >= j)[:, None]
            b_kd = tl.where(m_below, tl.exp(tl.where(m_below, b_g - b_gj[None, :], 0.0)), 0.0) * b_kj[None, :]
            m_col = (o_i == j)[None, :]
            b_a += tl.where(m_col, tl.sum(b_k * b_kd, axis=1)[:, None], 0.0)
            b_s += tl.where(m_col, tl.sum(b_q * b_kd, axis=1)[:, None], 0.0)
    b_beta = tl.load(beta + o_bth, mask=m_t, other=0.0).to(tl.float32)
    b_a = tl.where(o_i[:, None] > o_i[None, :], b_a * b_beta[:, None], 0.0)
    tl.store(a + o_bth[:, None] * BT + o_i[None, :], b_a, mask=m_t[:, None])
    tl.store(scores + o_bth[:, None] * BT + o_i[None, :], b_s, mask=m_t[:, None])


@triton.jit
def _block_pointers(x, i_b, i_h, i_t, T, HV: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                    ROW: tl.constexpr, COL: tl.constexpr):
    """Pointers and row mask of block (ROW, COL) `[BC, BC]` of chunk i_t's `[BT, BT]` matrix in x `[B, T, HV, BT]`."""
    o_c = tl.arange(0, BC)
    o_r = i_t * BT + ROW * BC + o_c
    return x + ((i_b * T + o_r) * HV + i_h)[:, None] * BT + COL * BC + o_c[None, :], (o_r < T)[:, None]


@triton.jit
def _load_block(x, i_b, i_h, i_t, T, HV: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, ROW: tl.constexpr, COL: tl.constexpr):
    p, m = _block_pointers(x, i_b, i_h, i_t, T, HV, BT, BC, ROW, COL)
    return tl.load(p, mask=m, other=0.0)


@triton.jit
def _store_block(
    x, b_x, i_b, i_h, i_t, T, HV: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, ROW: tl.constexpr, COL: tl.constexpr
):
    p, m = _block_pointers(x, i_b, i_h, i_t, T, HV, BT, BC, ROW, COL)
    tl.store(p, b_x, mask=m)


@triton.jit
def _invert_unit_lower(b_a, BC: tl.constexpr):
    """(I + A)^-1 for a strictly lower `[BC, BC]` A: X = I + Y with Y_i = L_i + sum_{j<i} L_ij Y_j, L = -A,
    one row per step (rows j >= i of the working matrix still hold L but meet L_ij = 0)."""
    o_c = tl.arange(0, BC)
    b_l = -b_a
    for i in range(1, BC):
        m_row = o_c == i
        b_row = tl.sum(tl.where(m_row[:, None], b_l, 0.0), axis=0)
        b_row = b_row + tl.sum(b_row[:, None] * b_l, axis=0)
        b_l = tl.where(m_row[:, None], b_row[None, :], b_l)
    return b_l + (o_c[:, None] == o_c[None, :]).to(tl.float32)


@triton.jit
def chunk_solve_kernel(a, a_inv, T, HV: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """a_inv = (I + A)^-1 per chunk, A from `chunk_kkt_kernel`, by 4 x 4 blocks of `[BC, BC]` (BT = 4 BC).

    With M = I + A and N = M^-1, both block lower triangular: N_ii = M_ii^-1 and, below the diagonal,
    N_ij = -N_ii sum_{j <= l < i} M_il N_lj. Grid: (num_chunks, B * HV).
    """
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // HV, i_bh % HV
    a10 = _load_block(a, i_b, i_h, i_t, T, HV, BT, BC, 1, 0)
    a20 = _load_block(a, i_b, i_h, i_t, T, HV, BT, BC, 2, 0)
    a21 = _load_block(a, i_b, i_h, i_t, T, HV, BT, BC, 2, 1)
    a30 = _load_block(a, i_b, i_h, i_t, T, HV, BT, BC, 3, 0)
    a31 = _load_block(a, i_b, i_h, i_t, T, HV, BT, BC, 3, 1)
    a32 = _load_block(a, i_b, i_h, i_t, T, HV, BT, BC, 3, 2)
    n00 = _invert_unit_lower(_load_block(a, i_b, i_h, i_t, T, HV, BT, BC, 0, 0), BC)
    n11 = _invert_unit_lower(_load_block(a, i_b, i_h, i_t, T, HV, BT, BC, 1, 1), BC)
    n22 = _invert_unit_lower(_load_block(a, i_b, i_h, i_t, T, HV, BT, BC, 2, 2), BC)
    n33 = _invert_unit_lower(_load_block(a, i_b, i_h, i_t, T, HV, BT, BC, 3, 3), BC)
    n10 = -tl.dot(n11, tl.dot(a10, n00, input_precision=DOT_PRECISION), input_precision=DOT_PRECISION)
    n21 = -tl.dot(n22, tl.dot(a21, n11, input_precision=DOT_PRECISION), input_precision=DOT_PRECISION)
    n32 = -tl.dot(n33, tl.dot(a32, n22, input_precision=DOT_PRECISION), input_precision=DOT_PRECISION)
    b_sum = tl.dot(a20, n00, input_precision=DOT_PRECISION) + tl.dot(a21, n10, input_precision=DOT_PRECISION)
    n20 = -tl.dot(n22, b_sum, input_precision=DOT_PRECISION)
    b_sum = tl.dot(a31, n11, input_precision=DOT_PRECISION) + tl.dot(a32, n21, input_precision=DOT_PRECISION)
    n31 = -tl.dot(n33, b_sum, input_precision=DOT_PRECISION)
    b_sum = tl.dot(a30, n00, input_precision=DOT_PRECISION) + tl.dot(a31, n10, input_precision=DOT_PRECISION)
    b_sum += tl.dot(a32, n20, input_precision=DOT_PRECISION)
    n30 = -tl.dot(n33, b_sum, input_precision=DOT_PRECISION)

    b_zero = tl.zeros([BC, BC], dtype=tl.float32)
    _store_block(a_inv, n00, i_b, i_h, i_t, T, HV, BT, BC, 0, 0)
    _store_block(a_inv, b_zero, i_b, i_h, i_t, T, HV, BT, BC, 0, 1)
    _store_block(a_inv, b_zero, i_b, i_h, i_t, T, HV, BT, BC, 0, 2)
    _store_block(a_inv, b_zero, i_b, i_h, i_t, T, HV, BT, BC, 0, 3)
    _store_block(a_inv, n10, i_b, i_h, i_t, T, HV, BT, BC, 1, 0)
    _store_block(a_inv, n11, i_b, i_h, i_t, T, HV, BT, BC, 1, 1)
    _store_block(a_inv, b_zero, i_b, i_h, i_t, T, HV, BT, BC, 1, 2)
    _store_block(a_inv, b_zero, i_b, i_h, i_t, T, HV, BT, BC, 1, 3)
    _store_block(a_inv, n20, i_b, i_h, i_t, T, HV, BT, BC, 2, 0)
    _store_block(a_inv, n21, i_b, i_h, i_t, T, HV, BT, BC, 2, 1)
    _store_block(a_inv, n22, i_b, i_h, i_t, T, HV, BT, BC, 2, 2)
    _store_block(a_inv, b_zero, i_b, i_h, i_t, T, HV, BT, BC, 2, 3)
    _store_block(a_inv, n30, i_b, i_h, i_t, T, HV, BT, BC, 3, 0)
    _store_block(a_inv, n31, i_b, i_h, i_t, T, HV, BT, BC, 3, 1)
    _store_block(a_inv, n32, i_b, i_h, i_t, T, HV, BT, BC, 3, 2)
    _store_block(a_inv, n33, i_b, i_h, i_t, T, HV, BT, BC, 3, 3)


@triton.jit
def chunk_wy_kernel(
    k, v, beta, g_cum, a_inv, w, u, T, HK: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PRECISION: tl.constexpr, PER_CHANNEL: tl.constexpr,
):
    """w = (I + A)^-1 diag(beta) (K * exp(G)) `[B, T, HV, K]` and u = (I + A)^-1 diag(beta) V `[B, T, HV, V]`,
    fp32, tile by tile. Grid: (num_chunks, B * HV)."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // HV, i_bh % HV
    i_hk = i_h // (HV // HK)
    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    m_t = o_t < T
    o_bth = (i_b * T + o_t) * HV + i_h
    b_ai = tl.load(a_inv + o_bth[:, None] * BT + o_i[None, :], mask=m_t[:, None], other=0.0)
    b_beta = tl.load(beta + o_bth, mask=m_t, other=0.0).to(tl.float32)
    if not PER_CHANNEL:
        b_scale_k = b_beta * tl.exp(tl.load(g_cum + o_bth, mask=m_t, other=0.0))
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        b_k = tl.load(k + ((i_b * T + o_t[:, None]) * HK + i_hk) * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        if PER_CHANNEL:
            b_gk = tl.load(g_cum + o_bth[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
            b_k = b_k * tl.exp(b_gk) * b_beta[:, None]
        else:
            b_k = b_k * b_scale_k[:, None]
        b_w = tl.dot(b_ai, b_k, input_precision=DOT_PRECISION)
        tl.store(w + o_bth[:, None] * K + o_k[None, :], b_w, mask=m_tk)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_v = tl.load(v + o_bth[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_u = tl.dot(b_ai, b_v * b_beta[:, None], input_precision=DOT_PRECISION)
        tl.store(u + o_bth[:, None] * V + o_v[None, :], b_u, mask=m_tv)


@triton.heuristics({"USE_INITIAL_STATE": lambda args: args["h0"] is not None})
@triton.jit
def chunk_state_kernel(
    k, w, u, g_cum, h0, h, v_new, ht, T, HK: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, PER_CHANNEL: tl.constexpr,
):
    """The only sequential kernel: per chunk c, h[c] = S (the chunk-start state, fp32 `[B * HV, NT, K, V]`),
    v_new = u - w S (`[B, T, HV, V]` fp32), then S = exp(G_last) S + sum_j exp(G_last - G_j) k_j v_new_j^T
    (per channel: diag(exp(G_last)) S + sum_j (k_j * exp(G_last - G_j)) v_new_j^T).
    ht `[B, HV, K, V]`: the final state. Grid: (cdiv(V, BV), B * HV); BK covers all of K."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // HV, i_bh % HV
    i_hk = i_h // (HV // HK)
    num_chunks = tl.cdiv(T, BT)
    o_i = tl.arange(0, BT)
    o_k, o_v = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_state = o_k[:, None] * V + o_v[None, :]

    b_s = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_s += tl.load(h0 + i_bh * K * V + o_state, mask=m_kv, other=0.0)
    for i_t in range(num_chunks):
        tl.store(h + (i_bh * num_chunks + i_t) * K * V + o_state, b_s, mask=m_kv)
        o_t = i_t * BT + o_i
        m_t = o_t < T
        o_bth = (i_b * T + o_t) * HV + i_h
        m_tk, m_tv = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
        b_w = tl.load(w + o_bth[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
        b_v = tl.load(u + o_bth[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
        b_v -= tl.dot(b_w, b_s, input_precision=DOT_PRECISION)
        tl.store(v_new + o_bth[:, None] * V + o_v[None, :], b_v, mask=m_tv)
        o_last = (i_b * T + tl.minimum(T, (i_t + 1) * BT) - 1) * HV + i_h
        b_k = tl.load(k + ((i_b * T + o_t[:, None]) * HK + i_hk) * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        if PER_CHANNEL:
            b_g = tl.load(g_cum + o_bth[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
            b_g_last = tl.load(g_cum + o_last * K + o_k, mask=m_k, other=0.0)
            b_k = b_k * tl.where(m_tk, tl.exp(tl.where(m_tk, b_g_last[None, :] - b_g, 0.0)), 0.0)
            b_s = b_s * tl.exp(b_g_last)[:, None]
        else:
            b_g = tl.load(g_cum + o_bth, mask=m_t, other=0.0)
            b_g_last = tl.load(g_cum + o_last)
            b_k = b_k * tl.where(m_t, tl.exp(b_g_last - b_g), 0.0)[:, None]
            b_s = b_s * tl.exp(b_g_last)
        b_s += tl.dot(tl.trans(b_k), b_v, input_precision=DOT_PRECISION)
    tl.store(ht + i_bh * K * V + o_state, b_s, mask=m_kv)


@triton.jit
def chunk_output_kernel(
    q, k, g_cum, scores, h, v_new, o, scale, T, HK: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PRECISION: tl.constexpr, PER_CHANNEL: tl.constexpr,
):
    """o = scale (exp(G) (q S_c) + (q k^T, causal, times exp(G_i - G_j)) v_new), in o's dtype. Per channel:
    o = scale ((q * exp(G)) S_c + scores v_new), `scores` `[B, T, HV, BT]` from `kda_kkt_kernel` (None otherwise).

    Grid: (cdiv(V, BV), num_chunks, B * HV).
    """
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // HV, i_bh % HV
    i_hk = i_h // (HV // HK)
    num_chunks = tl.cdiv(T, BT)
    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    o_v = i_v * BV + tl.arange(0, BV)
    m_t, m_v = o_t < T, o_v < V
    o_bth = (i_b * T + o_t) * HV + i_h

    b_qs = tl.zeros([BT, BV], dtype=tl.float32)
    b_qk = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        o_btk = ((i_b * T + o_t[:, None]) * HK + i_hk) * K + o_k[None, :]
        m_tk = m_t[:, None] & m_k[None, :]
        b_q = tl.load(q + o_btk, mask=m_tk, other=0.0).to(tl.float32)
        p_s = h + (i_bh * num_chunks + i_t) * K * V + o_k[:, None] * V + o_v[None, :]
        b_s = tl.load(p_s, mask=m_k[:, None] & m_v[None, :], other=0.0)
        if PER_CHANNEL:
            b_q = b_q * tl.exp(tl.load(g_cum + o_bth[:, None] * K + o_k[None, :], mask=m_tk, other=0.0))
        else:
            b_k = tl.load(k + o_btk, mask=m_tk, other=0.0).to(tl.float32)
            b_qk += tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION)
        b_qs += tl.dot(b_q, b_s, input_precision=DOT_PRECISION)
    b_v = tl.load(v_new + o_bth[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
    if PER_CHANNEL:
        b_qk = tl.load(scores + o_bth[:, None] * BT + o_i[None, :], mask=m_t[:, None], other=0.0)
        b_o = b_qs + tl.dot(b_qk, b_v, input_precision=DOT_PRECISION)
    else:
        b_g = tl.load(g_cum + o_bth, mask=m_t, other=0.0)
        m_causal = o_i[:, None] >= o_i[None, :]
        b_qk = tl.where(m_causal, b_qk * tl.exp(tl.where(m_causal, b_g[:, None] - b_g[None, :], 0.0)), 0.0)
        b_o = b_qs * tl.exp(b_g)[:, None] + tl.dot(b_qk, b_v, input_precision=DOT_PRECISION)
    p_o = o + o_bth[:, None] * V + o_v[None, :]
    tl.store(p_o, (b_o * scale).to(p_o.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


@triton.jit
def chunk_checkpoint_kernel(
    k, g_cum, h, v_new, ckpt_offsets, h_ckpt, T, B, HK: tl.constexpr, HV: tl.constexpr, K: tl.constexpr,
    V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PRECISION: tl.constexpr,
    PER_CHANNEL: tl.constexpr,
):
    """The state after n = ckpt_offsets[i] tokens: with c = (n - 1) // BT and m = n - c BT tokens of chunk c,
    exp(G[m-1]) S_c + sum_{j<m} exp(G[m-1] - G_j) k_j v_new_j^T (per channel, exp(G[m-1]) scales the rows of
    S_c and the columns of k). `h_ckpt` `[num_ckpts, B, HV, K, V]`.

    Grid: (cdiv(K, BK) * cdiv(V, BV), num_ckpts, B * HV).
    """
    i_kv, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    num_v_blocks = tl.cdiv(V, BV)
    i_k, i_v = i_kv // num_v_blocks, i_kv % num_v_blocks
    i_b, i_h = i_bh // HV, i_bh % HV
    i_hk = i_h // (HV // HK)
    num_chunks = tl.cdiv(T, BT)
    n = tl.load(ckpt_offsets + i_c)
    i_t = (n - 1) // BT
    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    o_k, o_v = i_k * BK + tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_t, m_k, m_v = o_t < n, o_k < K, o_v < V
    o_bth = (i_b * T + o_t) * HV + i_h
    o_state = o_k[:, None] * V + o_v[None, :]

    m_tk = m_t[:, None] & m_k[None, :]
    b_s = tl.load(h + (i_bh * num_chunks + i_t) * K * V + o_state, mask=m_k[:, None] & m_v[None, :], other=0.0)
    b_k = tl.load(k + ((i_b * T + o_t[:, None]) * HK + i_hk) * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
    # where() before use: exp(G[m-1] - G_j) overflows for j >= m and must not reach the product.
    if PER_CHANNEL:
        b_g = tl.load(g_cum + o_bth[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
        b_g_n = tl.load(g_cum + ((i_b * T + n - 1) * HV + i_h) * K + o_k, mask=m_k, other=0.0)
        b_k = b_k * tl.where(m_tk, tl.exp(tl.where(m_tk, b_g_n[None, :] - b_g, 0.0)), 0.0)
        b_s = b_s * tl.exp(b_g_n)[:, None]
    else:
        b_g = tl.load(g_cum + o_bth, mask=m_t, other=0.0)
        b_g_n = tl.load(g_cum + (i_b * T + n - 1) * HV + i_h)
        b_k = b_k * tl.where(m_t, tl.exp(tl.where(m_t, b_g_n - b_g, 0.0)), 0.0)[:, None]
        b_s = b_s * tl.exp(b_g_n)
    b_v = tl.load(v_new + o_bth[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
    b_s += tl.dot(tl.trans(b_k), b_v, input_precision=DOT_PRECISION)
    tl.store(h_ckpt + (i_c * B * HV + i_bh) * K * V + o_state, b_s, mask=m_k[:, None] & m_v[None, :])


def chunk_gated_delta_rule_triton(
    q, k, v, g, beta, initial_state=None, checkpoint_offsets=(), use_qk_l2norm=True, scale=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton `chunk_gated_delta_rule` (contract in `reference.chunk_gated_delta_rule_ref`), g `[B, T, HV]` (a decay
    per head) or `[B, T, HV, K]` (per key channel).

    Inputs are made contiguous (a copy only if they are not); shapes are checked by `checks.py` first.
    Workspace (fp32): normalised q and k, A and its inverse (per channel also the scores), w, u, v_new
    `[B, T, HV, *]` and the chunk-start states `[B, HV, num_chunks, K, V]`.
    """
    check_device(chunk_state_kernel, q=q, k=k, v=v, g=g, beta=beta, initial_state=initial_state)
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    out_dtype = q.dtype
    batch_size, seq_len, num_k_heads, head_k_dim = q.shape
    num_v_heads, head_v_dim = v.shape[2:]
    scale = head_k_dim**-0.5 if scale is None else scale
    device, num_chunks, num_ckpts = q.device, triton.cdiv(seq_len, CHUNK_SIZE), len(checkpoint_offsets)
    config = configs(head_k_dim, head_v_dim, out_dtype, _arch(device))
    bh = batch_size * num_v_heads
    per_channel = g.dim() == 4
    dims = dict(T=seq_len, HK=num_k_heads, HV=num_v_heads, K=head_k_dim, BT=CHUNK_SIZE, DOT_PRECISION=dot_precision(q.dtype))
    launch = dict(num_warps=config.num_warps, num_stages=config.num_stages)

    def workspace(*shape):
        return torch.empty(*shape, dtype=torch.float32, device=device)

    if use_qk_l2norm:
        num_rows, rows_per_program = batch_size * seq_len * num_k_heads, 16
        q, k = ((x, workspace(*x.shape)) for x in (q, k))
        for x, normed in (q, k):
            l2norm_kernel[(triton.cdiv(num_rows, rows_per_program),)](
                x, normed, num_rows, K=head_k_dim, BK=block_size(head_k_dim), BR=rows_per_program, **launch
            )
        q, k = q[1], k[1]
    g_cum, a, a_inv = workspace(*g.shape), workspace(*beta.shape, CHUNK_SIZE), workspace(*beta.shape, CHUNK_SIZE)
    scores = workspace(*beta.shape, CHUNK_SIZE) if per_channel else None
    if per_channel:
        kda_kkt_kernel[(num_chunks, bh)](
            q, k, g, beta, g_cum, a, scores, seq_len, HK=num_k_heads, HV=num_v_heads, K=head_k_dim, BT=CHUNK_SIZE,
            BK=config.block_k, **launch,
        )
    else:
        chunk_kkt_kernel[(num_chunks, bh)](k, g, beta, g_cum, a, BK=config.block_k, **dims, **launch)
    chunk_solve_kernel[(num_chunks, bh)](
        a, a_inv, seq_len, HV=num_v_heads, BT=CHUNK_SIZE, BC=SOLVE_BLOCK, DOT_PRECISION=dims["DOT_PRECISION"], **launch
    )
    w = workspace(batch_size, seq_len, num_v_heads, head_k_dim)
    u = workspace(*v.shape)
    tiles = dict(BK=config.block_k, BV=config.block_v, V=head_v_dim, PER_CHANNEL=per_channel)
    chunk_wy_kernel[(num_chunks, bh)](k, v, beta, g_cum, a_inv, w, u, **tiles, **dims, **launch)

    h = workspace(bh, num_chunks, head_k_dim, head_v_dim)
    v_new = workspace(*v.shape)
    final_state = workspace(batch_size, num_v_heads, head_k_dim, head_v_dim)
    chunk_state_kernel[(triton.cdiv(head_v_dim, config.state_block_v), bh)](
        k, w, u, g_cum, initial_state.contiguous() if initial_state is not None else None, h, v_new, final_state,
        BK=block_size(head_k_dim), BV=config.state_block_v, V=head_v_dim, PER_CHANNEL=per_channel, **dims,
        num_warps=config.state_num_warps, num_stages=config.state_num_stages,
    )
    o = torch.empty_like(v, dtype=out_dtype)
    chunk_output_kernel[(triton.cdiv(head_v_dim, config.block_v), num_chunks, bh)](
        q, k, g_cum, scores, h, v_new, o, scale, **tiles, **dims, **launch
    )
    checkpoint_states = final_state.new_empty((num_ckpts, *final_state.shape))
    if num_ckpts:
        offsets = torch.tensor(list(checkpoint_offsets), dtype=torch.int32, device=device)
        num_kv_blocks = triton.cdiv(head_k_dim, config.block_k) * triton.cdiv(head_v_dim, config.block_v)
        chunk_checkpoint_kernel[(num_kv_blocks, num_ckpts, bh)](
            k, g_cum, h, v_new, offsets, checkpoint_states, B=batch_size, **tiles, **dims, **launch
        )
    return o, final_state, checkpoint_states


def _arch(device: torch.device) -> int | None:
    """Compute capability as 80, 86, ... for a CUDA device; None otherwise (the interpreter)."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor
