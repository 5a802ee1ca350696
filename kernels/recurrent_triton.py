"""Gated delta rule decode step(s) in Triton: token by token, the fp32 state updated in place.

Imports triton: load it lazily (see `dispatch.py`). Arguments are checked in `checks.py` first.
"""

import torch
import triton
import triton.language as tl

from .launch import block_size, check_contiguous, check_device

# Each program keeps a [K, BLOCK_V] state tile; 32 columns give B * Hv * V / 32 programs for a decode step.
BLOCK_V = 32


@triton.jit
def recurrent_gated_delta_rule_kernel(
    q, k, v, g, beta, state, o, scale,
    T, HK: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, USE_QK_L2NORM: tl.constexpr, PER_CHANNEL: tl.constexpr,
):
    """For each token: S = diag(exp(g)) S (g one per head, or per key channel: `PER_CHANNEL`);
    S += k (beta (v - k^T S))^T; o = scale q^T S. Grid: (cdiv(V, BV), B * HV)."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // HV, i_bh % HV
    i_hk = i_h // (HV // HK)
    o_k, o_v = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    p_state = state + (i_bh * K + o_k[:, None]) * V + o_v[None, :]
    b_s = tl.load(p_state, mask=m_k[:, None] & m_v[None, :], other=0.0)

    for i_t in range(T):
        o_bth = (i_b * T + i_t) * HV + i_h
        o_btk = ((i_b * T + i_t) * HK + i_hk) * K + o_k
        b_q = tl.load(q + o_btk, mask=m_k, other=0.0).to(tl.float32)
        b_k = tl.load(k + o_btk, mask=m_k, other=0.0).to(tl.float32)
        if USE_QK_L2NORM:
            b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q) + 1e-6)
            b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k) + 1e-6)
        b_v = tl.load(v + o_bth * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        b_beta = tl.load(beta + o_bth).to(tl.float32)
        if PER_CHANNEL:
            b_s = b_s * tl.exp(tl.load(g + o_bth * K + o_k, mask=m_k, other=0.0).to(tl.float32))[:, None]
        else:
            b_s = b_s * tl.exp(tl.load(g + o_bth).to(tl.float32))
        b_delta = b_beta * (b_v - tl.sum(b_k[:, None] * b_s, axis=0))
        b_s = b_s + b_k[:, None] * b_delta[None, :]
        p_o = o + o_bth * V + o_v
        tl.store(p_o, (scale * tl.sum(b_q[:, None] * b_s, axis=0)).to(p_o.dtype.element_ty), mask=m_v)

    tl.store(p_state, b_s, mask=m_k[:, None] & m_v[None, :])


def recurrent_gated_delta_rule_triton(q, k, v, g, beta, state, use_qk_l2norm=True, scale=None) -> torch.Tensor:
    """Triton `recurrent_gated_delta_rule` (contract in `reference.recurrent_gated_delta_rule_ref`), g per head or
    per key channel.

    `state` must be contiguous: it is written in place, so it is never copied.
    """
    check_device(recurrent_gated_delta_rule_kernel, q=q, k=k, v=v, g=g, beta=beta, state=state)
    check_contiguous(state=state)
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    batch_size, seq_len, num_k_heads, head_k_dim = q.shape
    num_v_heads, head_v_dim = v.shape[2:]
    scale = head_k_dim**-0.5 if scale is None else scale
    o = torch.empty_like(v, dtype=q.dtype)
    block_v = min(block_size(head_v_dim), BLOCK_V)
    recurrent_gated_delta_rule_kernel[(triton.cdiv(head_v_dim, block_v), batch_size * num_v_heads)](
        q, k, v, g, beta, state, o, scale,
        T=seq_len, HK=num_k_heads, HV=num_v_heads, K=head_k_dim, V=head_v_dim,
        BK=block_size(head_k_dim), BV=block_v, USE_QK_L2NORM=use_qk_l2norm, PER_CHANNEL=g.dim() == 4,
    )
    return o
