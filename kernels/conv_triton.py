"""Depthwise causal conv1d (+ SiLU) over `[conv_state | x]` in Triton: prefill, its states, and decode.

Position p of x reads x[..., p] for p >= 0 and conv_state[..., W + p] for p < 0, so no concatenated copy
is ever built. Imports triton: load it lazily (see `dispatch.py`). Arguments are checked in `checks.py`.
"""

import torch
import triton
import triton.language as tl

from .launch import check_contiguous, check_device

BLOCK_D = 64
# 32 positions: a [64, 64] tile per program spilled ~2.5 KB a thread on sm_80-sm_90 (benchmarks/compile_check.py).
BLOCK_T = 32
_HAS = {
    "HAS_BIAS": lambda args: args["bias"] is not None,
    "HAS_STATE": lambda args: args["conv_state"] is not None,
}


@triton.jit
def _load_inputs(x, conv_state, i_b, o_d, m_d, o_pos, m_pos, T, D, W: tl.constexpr, HAS_STATE: tl.constexpr):
    """fp32 `[BD, len(o_pos)]` of `[conv_state | x]` at x positions o_pos (negative: inside conv_state)."""
    m = m_d[:, None] & m_pos[None, :]
    b_x = tl.load(x + (i_b * D + o_d[:, None]) * T + o_pos[None, :], mask=m & (o_pos >= 0)[None, :], other=0.0)
    b_x = b_x.to(tl.float32)
    if HAS_STATE:
        p_state = conv_state + (i_b * D + o_d[:, None]) * W + W + o_pos[None, :]
        b_x += tl.load(p_state, mask=m & (o_pos < 0)[None, :], other=0.0).to(tl.float32)
    return b_x


@triton.jit
def _finish(b_acc, bias, o_d, m_d, HAS_BIAS: tl.constexpr, USE_SILU: tl.constexpr):
    """Adds the bias `[BD]` to b_acc `[BD, n]` and applies SiLU."""
    if HAS_BIAS:
        b_acc += tl.load(bias + o_d, mask=m_d, other=0.0).to(tl.float32)[:, None]
    if USE_SILU:
        b_acc = b_acc * tl.sigmoid(b_acc)
    return b_acc


@triton.heuristics(_HAS)
@triton.jit
def causal_conv1d_kernel(
    x, weight, bias, conv_state, out, T, D, W: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
    USE_SILU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr,
):
    """out[t] = act(bias + sum_w weight[w] * input[t + 1 + w - W]). Grid: (cdiv(T, BT), cdiv(D, BD), B)."""
    i_t, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_d, o_t = i_d * BD + tl.arange(0, BD), i_t * BT + tl.arange(0, BT)
    m_d, m_t = o_d < D, o_t < T
    b_acc = tl.zeros([BD, BT], dtype=tl.float32)
    for i_w in tl.static_range(W):
        b_weight = tl.load(weight + o_d * W + i_w, mask=m_d, other=0.0).to(tl.float32)
        b_x = _load_inputs(x, conv_state, i_b, o_d, m_d, o_t + 1 + i_w - W, m_t, T, D, W, HAS_STATE)
        b_acc += b_weight[:, None] * b_x
    b_acc = _finish(b_acc, bias, o_d, m_d, HAS_BIAS, USE_SILU)
    p_out = out + (i_b * D + o_d[:, None]) * T + o_t[None, :]
    tl.store(p_out, b_acc.to(p_out.dtype.element_ty), mask=m_d[:, None] & m_t[None, :])


@triton.heuristics({"HAS_STATE": lambda args: args["conv_state"] is not None})
@triton.jit
def causal_conv1d_states_kernel(
    x, conv_state, ends, states, B, T, D, W: tl.constexpr, BD: tl.constexpr, BW: tl.constexpr,
    HAS_STATE: tl.constexpr,
):
    """states[n] = the W inputs before position ends[n], i.e. the conv state after ends[n] tokens.

    Grid: (cdiv(D, BD), len(ends), B); states `[len(ends), B, D, W]`.
    """
    i_d, i_n, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_d, o_w = i_d * BD + tl.arange(0, BD), tl.arange(0, BW)
    m_d, m_w = o_d < D, o_w < W
    o_pos = tl.load(ends + i_n) + o_w - W
    b_state = _load_inputs(x, conv_state, i_b, o_d, m_d, o_pos, m_w, T, D, W, HAS_STATE)
    p_states = states + ((i_n * B + i_b) * D + o_d[:, None]) * W + o_w[None, :]
    tl.store(p_states, b_state.to(p_states.dtype.element_ty), mask=m_d[:, None] & m_w[None, :])


@triton.heuristics({"HAS_BIAS": lambda args: args["bias"] is not None})
@triton.jit
def causal_conv1d_update_kernel(
    x, weight, bias, conv_state, out, T, D, W: tl.constexpr, BD: tl.constexpr, BW: tl.constexpr,
    USE_SILU: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """Decode: outputs for T (few) tokens, then conv_state shifted by T in place. Grid: (cdiv(D, BD), B)."""
    i_d, i_b = tl.program_id(0), tl.program_id(1)
    o_d, o_w = i_d * BD + tl.arange(0, BD), tl.arange(0, BW)
    m_d, m_w = o_d < D, o_w < W
    b_weight = tl.load(weight + o_d[:, None] * W + o_w[None, :], mask=m_d[:, None] & m_w[None, :], other=0.0)
    for i_t in range(T):
        b_window = _load_inputs(x, conv_state, i_b, o_d, m_d, i_t + 1 + o_w - W, m_w, T, D, W, True)
        b_out = _finish(tl.sum(b_window * b_weight.to(tl.float32), axis=1)[:, None], bias, o_d, m_d, HAS_BIAS, USE_SILU)
        p_out = out + (i_b * D + o_d[:, None]) * T + i_t
        tl.store(p_out, b_out.to(p_out.dtype.element_ty), mask=m_d[:, None])
    b_state = _load_inputs(x, conv_state, i_b, o_d, m_d, T + o_w - W, m_w, T, D, W, True)
    # Other threads of this program may still be reading the old state: wait for all before overwriting.
    tl.debug_barrier()
    p_state = conv_state + (i_b * D + o_d[:, None]) * W + o_w[None, :]
    tl.store(p_state, b_state.to(p_state.dtype.element_ty), mask=m_d[:, None] & m_w[None, :])


def causal_conv1d_triton(x, weight, bias=None, conv_state=None, activation="silu", checkpoint_offsets=()):
    """Triton `causal_conv1d` (contract in `reference.causal_conv1d_ref`); inputs are made contiguous."""
    check_device(causal_conv1d_kernel, x=x, weight=weight, bias=bias, conv_state=conv_state)
    x, weight = x.contiguous(), weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    conv_state = conv_state.contiguous() if conv_state is not None else None
    batch_size, dim, seq_len = x.shape
    width = weight.shape[1]
    out = torch.empty_like(x)
    causal_conv1d_kernel[(triton.cdiv(seq_len, BLOCK_T), triton.cdiv(dim, BLOCK_D), batch_size)](
        x, weight, bias, conv_state, out, seq_len, dim, W=width, BD=BLOCK_D, BT=BLOCK_T,
        USE_SILU=activation == "silu",
    )
    # One launch writes the checkpoint states and, as the last entry, the new state after all T tokens.
    ends = torch.tensor([*checkpoint_offsets, seq_len], dtype=torch.int32, device=x.device)
    states = x.new_empty((len(ends), batch_size, dim, width))
    causal_conv1d_states_kernel[(triton.cdiv(dim, BLOCK_D), len(ends), batch_size)](
        x, conv_state, ends, states, batch_size, seq_len, dim, W=width, BD=BLOCK_D, BW=triton.next_power_of_2(width)
    )
    return out, states[-1], states[:-1]


def causal_conv1d_update_triton(x, conv_state, weight, bias=None, activation="silu") -> torch.Tensor:
    """Triton `causal_conv1d_update`; `conv_state` must be contiguous (written in place, never copied)."""
    check_device(causal_conv1d_update_kernel, x=x, conv_state=conv_state, weight=weight, bias=bias)
    check_contiguous(conv_state=conv_state)
    x, weight = x.contiguous(), weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    batch_size, dim, seq_len = x.shape
    out = torch.empty_like(x)
    causal_conv1d_update_kernel[(triton.cdiv(dim, BLOCK_D), batch_size)](
        x, weight, bias, conv_state, out, seq_len, dim, W=weight.shape[1], BD=BLOCK_D,
        BW=triton.next_power_of_2(weight.shape[1]), USE_SILU=activation == "silu",
    )
    return out
