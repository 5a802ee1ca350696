"""Chunked gated delta rule forward in Triton, with the states at arbitrary checkpoint offsets in one pass.

Two kernels: a chunk-parallel one builds each chunk's WY (UT-transform) quantities, then one program per
(batch, value head, V block) walks the chunks in order, carrying the state and writing outputs and the
checkpoint states. Imports triton: load it lazily (see `dispatch.py`). Arguments are checked in `checks.py`.
"""

import bisect

import torch
import triton
import triton.language as tl

from .launch import block_size, check_device, dot_precision

CHUNK_SIZE = 64
# Each sequential program holds a [K, BLOCK_V] state tile: smaller tiles give more programs, larger ones
# fewer re-reads of q, k and w. Untuned: compare on a GPU with benchmarks/gpu_check.py.
BLOCK_V = 64


@triton.jit
def _l2norm_rows(b_x, USE_QK_L2NORM: tl.constexpr):
    """Rows divided by sqrt(sum of squares + 1e-6), the eps of `reference.l2_normalize`."""
    if USE_QK_L2NORM:
        b_x = b_x * tl.rsqrt(tl.sum(b_x * b_x, axis=1) + 1e-6)[:, None]
    return b_x


@triton.jit
def _state_after(b_s, b_k, b_v, b_g, o_i, n, DOT_PRECISION: tl.constexpr):
    """State after the first n tokens of a chunk: exp(G[n-1]) S + sum_{j<n} exp(G[n-1] - G[j]) k_j v_j^T.

    b_s `[BK, BV]` is the chunk-start state, b_v `[BT, BV]` the values actually written (u - w S), b_g
    `[BT]` the within-chunk cumulative log decay. Works for any n in [1, BT], hence checkpoints anywhere.
    """
    b_g_n = tl.sum(tl.where(o_i == n - 1, b_g, 0.0))
    # where() before use: exp(G[n-1] - G[j]) overflows for j >= n and must not reach the product.
    b_decay = tl.where(o_i < n, tl.exp(b_g_n - b_g), 0.0)
    b_kd = b_k * b_decay[:, None]
    return b_s * tl.exp(b_g_n) + tl.dot(tl.trans(b_kd), b_v, input_precision=DOT_PRECISION)


@triton.jit
def chunk_gated_delta_rule_wy_kernel(
    k, v, g, beta, w, u, g_cum,
    T, HK: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_QK_L2NORM: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Per chunk and value head: w = (I + A)^-1 diag(beta exp(G)) K, u = (I + A)^-1 diag(beta) V, and G.

    A[i, j] = beta_i exp(G_i - G_j) (k_i . k_j) for j < i, so that the chunk's written values are
    u - w S for any start state S. Grid: (num_chunks, B * HV).
    """
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // HV, i_bh % HV
    i_hk = i_h // (HV // HK)
    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    m_t, m_k, m_v = o_t < T, o_k < K, o_v < V
    o_bth = (i_b * T + o_t) * HV + i_h

    # Padded tokens load k = 0, beta = 0, g = 0: they neither read nor write the state.
    b_g = tl.cumsum(tl.load(g + o_bth, mask=m_t, other=0.0).to(tl.float32), axis=0)
    b_beta = tl.load(beta + o_bth, mask=m_t, other=0.0).to(tl.float32)
    p_k = k + ((i_b * T + o_t[:, None]) * HK + i_hk) * K + o_k[None, :]
    b_k = _l2norm_rows(tl.load(p_k, mask=m_t[:, None] & m_k[None, :], other=0.0).to(tl.float32), USE_QK_L2NORM)
    p_v = v + o_bth[:, None] * V + o_v[None, :]
    b_v = tl.load(p_v, mask=m_t[:, None] & m_v[None, :], other=0.0).to(tl.float32)

    m_lower = o_i[:, None] > o_i[None, :]
    b_decay = tl.where(m_lower, tl.exp(b_g[:, None] - b_g[None, :]), 0.0)
    b_L = -tl.dot(b_k * b_beta[:, None], tl.trans(b_k), input_precision=DOT_PRECISION) * b_decay  # L = -A
    # (I + A)^-1 = (I - L)^-1 = I + X with X_i = L_i + sum_{j<i} L_ij X_j: forward substitution, one row per step.
    # Rows j >= i of b_L are not yet X but meet L_ij = 0, so they drop out of the sum.
    for i in range(1, BT):
        m_row = o_i == i
        b_l = tl.sum(tl.where(m_row[:, None], b_L, 0.0), axis=0)
        b_l = b_l + tl.sum(b_l[:, None] * b_L, axis=0)
        b_L = tl.where(m_row[:, None], b_l[None, :], b_L)
    b_Ai = b_L + (o_i[:, None] == o_i[None, :]).to(tl.float32)

    b_w = tl.dot(b_Ai, b_k * (b_beta * tl.exp(b_g))[:, None], input_precision=DOT_PRECISION)
    b_u = tl.dot(b_Ai, b_v * b_beta[:, None], input_precision=DOT_PRECISION)
    tl.store(w + o_bth[:, None] * K + o_k[None, :], b_w, mask=m_t[:, None] & m_k[None, :])
    tl.store(u + o_bth[:, None] * V + o_v[None, :], b_u, mask=m_t[:, None] & m_v[None, :])
    tl.store(g_cum + o_bth, b_g, mask=m_t)


@triton.heuristics({
    "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
    "STORE_CHECKPOINTS": lambda args: args["h_ckpt"] is not None,
})
@triton.jit
def chunk_gated_delta_rule_kernel(
    q, k, w, u, g_cum, o, h0, ht, h_ckpt, ckpt_offsets, chunk_ckpt_starts,
    scale, T, B, HK: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_QK_L2NORM: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, STORE_CHECKPOINTS: tl.constexpr,
):
    """Sequential over chunks: outputs, final state, and the checkpoints falling in each chunk.

    Checkpoints `chunk_ckpt_starts[c] : chunk_ckpt_starts[c + 1]` end inside chunk c. Grid: (cdiv(V, BV), B * HV).
    """
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // HV, i_bh % HV
    i_hk = i_h // (HV // HK)
    o_i = tl.arange(0, BT)
    o_k, o_v = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_state = (i_bh * K + o_k[:, None]) * V + o_v[None, :]

    b_s = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_s += tl.load(h0 + o_state, mask=m_kv, other=0.0).to(tl.float32)

    for i_t in range(tl.cdiv(T, BT)):
        o_t = i_t * BT + o_i
        m_t = o_t < T
        o_bth = (i_b * T + o_t) * HV + i_h
        o_btk = ((i_b * T + o_t[:, None]) * HK + i_hk) * K + o_k[None, :]
        m_tk = m_t[:, None] & m_k[None, :]
        b_q = _l2norm_rows(tl.load(q + o_btk, mask=m_tk, other=0.0).to(tl.float32), USE_QK_L2NORM)
        b_k = _l2norm_rows(tl.load(k + o_btk, mask=m_tk, other=0.0).to(tl.float32), USE_QK_L2NORM)
        b_w = tl.load(w + o_bth[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
        b_u = tl.load(u + o_bth[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
        b_g = tl.load(g_cum + o_bth, mask=m_t, other=0.0)

        # The values this chunk writes, now that its start state is known.
        b_v = b_u - tl.dot(b_w, b_s, input_precision=DOT_PRECISION)
        m_causal = o_i[:, None] >= o_i[None, :]
        b_qk = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION)
        b_qk = b_qk * tl.where(m_causal, tl.exp(b_g[:, None] - b_g[None, :]), 0.0)
        b_o = tl.dot(b_q, b_s, input_precision=DOT_PRECISION) * tl.exp(b_g)[:, None]
        b_o += tl.dot(b_qk, b_v, input_precision=DOT_PRECISION)
        p_o = o + o_bth[:, None] * V + o_v[None, :]
        tl.store(p_o, (b_o * scale).to(p_o.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])

        if STORE_CHECKPOINTS:
            for i_c in range(tl.load(chunk_ckpt_starts + i_t), tl.load(chunk_ckpt_starts + i_t + 1)):
                n = tl.load(ckpt_offsets + i_c) - i_t * BT
                b_c = _state_after(b_s, b_k, b_v, b_g, o_i, n, DOT_PRECISION)
                tl.store(h_ckpt + i_c * B * HV * K * V + o_state, b_c, mask=m_kv)
        b_s = _state_after(b_s, b_k, b_v, b_g, o_i, tl.minimum(T - i_t * BT, BT), DOT_PRECISION)

    tl.store(ht + o_state, b_s, mask=m_kv)


def chunk_gated_delta_rule_triton(
    q, k, v, g, beta, initial_state=None, checkpoint_offsets=(), use_qk_l2norm=True, scale=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton `chunk_gated_delta_rule` (contract in `reference.chunk_gated_delta_rule_ref`).

    Inputs are made contiguous (a copy only if they are not); shapes are checked by `checks.py` first.
    """
    check_device(chunk_gated_delta_rule_kernel, q=q, k=k, v=v, g=g, beta=beta, initial_state=initial_state)
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    batch_size, seq_len, num_k_heads, head_k_dim = q.shape
    num_v_heads, head_v_dim = v.shape[2:]
    scale = head_k_dim**-0.5 if scale is None else scale
    device, num_chunks, num_ckpts = q.device, triton.cdiv(seq_len, CHUNK_SIZE), len(checkpoint_offsets)
    bk, bv = block_size(head_k_dim), block_size(head_v_dim)
    dims = dict(T=seq_len, HK=num_k_heads, HV=num_v_heads, K=head_k_dim, V=head_v_dim, BT=CHUNK_SIZE, BK=bk)
    flags = dict(USE_QK_L2NORM=use_qk_l2norm, DOT_PRECISION=dot_precision(q.dtype))

    w = torch.empty(batch_size, seq_len, num_v_heads, head_k_dim, dtype=torch.float32, device=device)
    u = torch.empty(batch_size, seq_len, num_v_heads, head_v_dim, dtype=torch.float32, device=device)
    g_cum = torch.empty(batch_size, seq_len, num_v_heads, dtype=torch.float32, device=device)
    chunk_gated_delta_rule_wy_kernel[(num_chunks, batch_size * num_v_heads)](
        k, v, g, beta, w, u, g_cum, BV=bv, **dims, **flags
    )

    o = torch.empty_like(v, dtype=q.dtype)
    final_state = torch.empty(batch_size, num_v_heads, head_k_dim, head_v_dim, dtype=torch.float32, device=device)
    checkpoint_states = final_state.new_empty((num_ckpts, *final_state.shape))
    ckpt_offsets = chunk_ckpt_starts = None
    if num_ckpts:
        offsets = list(checkpoint_offsets)
        # Offset n ends in chunk (n - 1) // CHUNK_SIZE; chunk c owns checkpoints starts[c] : starts[c + 1].
        starts = [bisect.bisect_right(offsets, c * CHUNK_SIZE) for c in range(num_chunks + 1)]
        ckpt_offsets = torch.tensor(offsets, dtype=torch.int32, device=device)
        chunk_ckpt_starts = torch.tensor(starts, dtype=torch.int32, device=device)
    block_v = min(bv, BLOCK_V)
    chunk_gated_delta_rule_kernel[(triton.cdiv(head_v_dim, block_v), batch_size * num_v_heads)](
        q, k, w, u, g_cum, o, initial_state.contiguous() if initial_state is not None else None,
        final_state, checkpoint_states if num_ckpts else None, ckpt_offsets, chunk_ckpt_starts,
        scale, B=batch_size, BV=block_v, **dims, **flags,
    )
    return o, final_state, checkpoint_states
