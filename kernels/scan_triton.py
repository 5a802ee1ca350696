"""Mamba's (v1: Jamba's) selective scan in Triton, with the states at arbitrary checkpoint offsets in one pass; the
same kernel runs decode steps, its state read and written in place.

The decay exp(s[d] A[d, n]) differs per channel and state element, so there is no chunk form whose work is a matmul
(SSD's needs one decay per head): each program walks the tokens with a `[BD, N]` tile of the state in registers, as
mamba_ssm's selective scan walks them, and stores the tile after each checkpoint token.
Imports triton: load it lazily (see `dispatch.py`). Arguments are checked in `checks.py` first.
"""

import torch
import triton
import triton.language as tl

from .launch import block_size, check_contiguous, check_device

# Channels per program: a [32, N] fp32 tile of the state; B * D / 32 programs walk the sequence side by side.
BLOCK_D = 32


@triton.heuristics({"HAS_INITIAL": lambda args: args["h0"] is not None})
@triton.jit
def selective_scan_kernel(
    x, dt, A, B, C, D, dt_bias, h0, y, ht, checkpoint_of_token, h_ckpt, T, BATCH,
    DIM: tl.constexpr, G: tl.constexpr, N: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, HAS_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_INITIAL: tl.constexpr, HAS_CHECKPOINTS: tl.constexpr,
):
    """For each token t: s = softplus(dt_t + dt_bias); S = exp(s A) S + (s x_t) B_t; y_t = S C_t + D x_t, channel d
    reading group d // (DIM // G) of B and C.

    x, dt, y `[B, T, DIM]`; A `[DIM, N]`; B, C `[B, T, G, N]`; h0, ht `[B, DIM, N]` fp32 (may be one tensor);
    checkpoint_of_token `[T]` int32: the checkpoint index of the state after token t, or -1; h_ckpt
    `[num_ckpts, B, DIM, N]`. Grid: (cdiv(DIM, BD), B).
    """
    i_d, i_b = tl.program_id(0), tl.program_id(1)
    o_d, o_n = i_d * BD + tl.arange(0, BD), tl.arange(0, BN)
    m_d, m_n = o_d < DIM, o_n < N
    m_dn = m_d[:, None] & m_n[None, :]
    o_state = (i_b * DIM + o_d[:, None]) * N + o_n[None, :]
    o_group = (tl.minimum(o_d, DIM - 1) // (DIM // G))[:, None] * N + o_n[None, :]  # B, C of each channel's group
    # Padded state columns get A = 0 and B = 0: they stay 0.
    b_a = tl.load(A + o_d[:, None] * N + o_n[None, :], mask=m_dn, other=0.0).to(tl.float32)
    b_h = tl.zeros([BD, BN], dtype=tl.float32)
    if HAS_INITIAL:
        b_h += tl.load(h0 + o_state, mask=m_dn, other=0.0)
    if HAS_D:
        b_skip = tl.load(D + o_d, mask=m_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        b_bias = tl.load(dt_bias + o_d, mask=m_d, other=0.0).to(tl.float32)
    for t in range(T):
        o_bt = i_b * T + t
        b_x = tl.load(x + o_bt * DIM + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_dt = tl.load(dt + o_bt * DIM + o_d, mask=m_d, other=0.0).to(tl.float32)
        if HAS_BIAS:
            b_dt += b_bias
        # softplus as torch computes it (linear above 20); the where() keeps exp's overflow out of the result.
        b_dt = tl.where(b_dt > 20.0, b_dt, tl.log(1.0 + tl.exp(tl.minimum(b_dt, 20.0))))
        b_B = tl.load(B + o_bt * G * N + o_group, mask=m_dn, other=0.0).to(tl.float32)
        b_C = tl.load(C + o_bt * G * N + o_group, mask=m_dn, other=0.0).to(tl.float32)
        b_h = tl.exp(b_dt[:, None] * b_a) * b_h + (b_dt * b_x)[:, None] * b_B
        b_y = tl.sum(b_h * b_C, axis=1)
        if HAS_D:
            b_y += b_skip * b_x
        p_y = y + o_bt * DIM + o_d
        tl.store(p_y, b_y.to(p_y.dtype.element_ty), mask=m_d)
        if HAS_CHECKPOINTS:
            i_c = tl.load(checkpoint_of_token + t)
            if i_c >= 0:
                tl.store(h_ckpt + i_c * BATCH * DIM * N + o_state, b_h, mask=m_dn)
    tl.store(ht + o_state, b_h, mask=m_dn)


def _launch(x, dt, A, B, C, D, dt_bias, h0, ht, checkpoint_offsets=()) -> tuple[torch.Tensor, torch.Tensor]:
    batch_size, seq_len, dim = x.shape
    x, dt, B, C = (t.contiguous() for t in (x, dt, B, C))
    y = torch.empty_like(x)
    checkpoints = ht.new_empty(len(checkpoint_offsets), *ht.shape)
    checkpoint_of_token = None
    if checkpoint_offsets:
        checkpoint_of_token = torch.full((seq_len,), -1, dtype=torch.int32, device=x.device)
        checkpoint_of_token[torch.tensor(checkpoint_offsets, device=x.device) - 1] = torch.arange(
            len(checkpoint_offsets), dtype=torch.int32, device=x.device)
    state_size = A.shape[1]
    selective_scan_kernel[(triton.cdiv(dim, BLOCK_D), batch_size)](
        x, dt, A.contiguous(), B, C, D, dt_bias, h0, y, ht, checkpoint_of_token, checkpoints, seq_len, batch_size,
        DIM=dim, G=1 if B.dim() == 3 else B.shape[2], N=state_size, BD=BLOCK_D, BN=block_size(state_size), HAS_D=D is not None, HAS_BIAS=dt_bias is not None,
        HAS_CHECKPOINTS=bool(checkpoint_offsets),
    )
    return y, checkpoints


def selective_scan_triton(
    x, dt, A, B, C, D=None, dt_bias=None, initial_state=None, checkpoint_offsets=()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton `selective_scan` (contract in `reference.selective_scan_ref`)."""
    check_device(selective_scan_kernel, x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias, initial_state=initial_state)
    final_state = torch.empty(x.shape[0], x.shape[2], A.shape[1], dtype=torch.float32, device=x.device)
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    y, checkpoints = _launch(x, dt, A, B, C, D, dt_bias, h0, final_state, checkpoint_offsets)
    return y, final_state, checkpoints


def recurrent_selective_scan_triton(x, dt, A, B, C, D, dt_bias, state) -> torch.Tensor:
    """Triton `recurrent_selective_scan`: `state` `[B, D, N]` fp32, contiguous, read and written in place."""
    check_device(selective_scan_kernel, x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias, state=state)
    check_contiguous(state=state)
    return _launch(x, dt, A, B, C, D, dt_bias, state, state)[0]
