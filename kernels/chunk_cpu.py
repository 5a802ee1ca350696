"""Fast chunked gated delta rule for CPU tensors, in plain PyTorch (batched matmuls, no per-token loop).

Same contract as `chunk_gated_delta_rule_ref` in `reference.py`; the Triton kernels live elsewhere.
"""

import torch

from .reference import l2_normalize

# Intra-chunk work grows with the chunk size, the sequential loop shrinks with it; measured at T=2048 on
# the tiny benchmark model's shapes (benchmarks/kernels.py).
CHUNK_SIZE = 64
# Decays below exp(-30) ≈ 1e-13 are flushed to exactly zero: far below fp32 resolution, and without the
# flush the strong decays of real models (g ≈ -10 per token) fill the matmuls and the triangular solve with
# denormal products, which run an order of magnitude slower on x86.
LOG_DECAY_FLOOR = -30.0


def _exp_floored(log_decay: torch.Tensor) -> torch.Tensor:
    """exp(log_decay), in place, with exp(x) = 0 wherever x < LOG_DECAY_FLOOR."""
    return log_decay.masked_fill_(log_decay < LOG_DECAY_FLOOR, float("-inf")).exp_()


def _to_chunks(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """`[B, T, H, *D]` -> chunk-major fp32 `[num_chunks, B, H, chunk_size, *D]`, zero-padded at the end of T.

    Chunk-major, so that each chunk's operands in the sequential loop are one contiguous block. Padded
    tokens get k = 0, beta = 0 and g = 0: identity steps, which leave the final state unchanged.
    """
    batch_size, seq_len, num_heads, *dims = x.shape
    num_full, tail = divmod(seq_len, chunk_size)
    num_chunks = num_full + (tail > 0)
    out = x.new_empty((num_chunks, batch_size, num_heads, chunk_size, *dims), dtype=torch.float32)
    by_token = out.transpose(2, 3).transpose(0, 1)  # a `[B, num_chunks, C, H, *D]` view
    by_token[:, :num_full] = x[:, : num_full * chunk_size].view(batch_size, num_full, chunk_size, num_heads, *dims)
    if tail:
        by_token[:, num_full, :tail] = x[:, num_full * chunk_size :]
        by_token[:, num_full, tail:] = 0
    return out


def chunk_gated_delta_rule_cpu(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    checkpoint_offsets: list[int] | tuple[int, ...] = (),
    use_qk_l2norm: bool = True,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gated delta rule over chunks of tokens, computed in fp32.

    Per chunk, the UT transform turns the chunk's delta-rule steps into one triangular solve. The chunk's
    effect on the state is then affine, S_next = M S + B (M `[K, K]`, B `[K, V]`), computed for all chunks
    at once, so the only sequential part is one small `baddbmm` per chunk; the outputs are one batched
    matmul over the chunk-start states afterwards. A checkpoint inside a chunk applies the same update,
    restricted to the chunk's first tokens, to the chunk-start state: all states come from one pass.

    Args:
        q, k: `[B, T, Hk, K]`; v: `[B, T, Hv, V]` with Hv a multiple of Hk (value head h reads key head
            h // (Hv // Hk)); g (log decay, <= 0), beta: `[B, T, Hv]`.
        initial_state: `[B, Hv, K, V]` or None (zeros).
        checkpoint_offsets: strictly increasing ints in [1, T]: also return the state after that many tokens.
        use_qk_l2norm: L2-normalise q and k per head first. scale: defaults to K ** -0.5.

    Returns:
        o `[B, T, Hv, V]` in q's dtype, the final state `[B, Hv, K, V]` fp32, and the checkpoint states
        `[len(checkpoint_offsets), B, Hv, K, V]` fp32.
    """
    out_dtype = q.dtype
    batch_size, seq_len, num_k_heads, head_k_dim = k.shape
    num_v_heads, head_v_dim = v.shape[2:]
    group_size = num_v_heads // num_k_heads
    scale = head_k_dim**-0.5 if scale is None else scale
    chunk_size = min(CHUNK_SIZE, seq_len)

    # Normalise on the Hk key heads, before the value heads of a group share them.
    q, k = q.float(), k.float()
    if use_qk_l2norm:
        q, k = l2_normalize(q), l2_normalize(k)
    # Key-side tensors `[n, B, Hk, 1, C, K]`, value-side `[n, B, Hk, r, C, *]`: the group dim r broadcasts,
    # so q and k are shared without repeat_interleave.
    q = _to_chunks(q * scale, chunk_size).unsqueeze(3)
    k = _to_chunks(k, chunk_size).unsqueeze(3)
    num_chunks = k.shape[0]
    group_shape = (num_chunks, batch_size, num_k_heads, group_size, chunk_size)
    v = _to_chunks(v, chunk_size).view(*group_shape, head_v_dim)
    g = _to_chunks(g, chunk_size).view(group_shape)
    beta = _to_chunks(beta, chunk_size).view(group_shape)

    # Log decay from the chunk start. decay[i, j] = exp(G_i - G_j) for j <= i and exp(-inf) = 0 above the
    # diagonal: no exp of a positive number, so nothing overflows however strong the decay.
    cum_g = g.cumsum(-1)
    upper = torch.ones(chunk_size, chunk_size, dtype=torch.bool).triu(1)
    decay = _exp_floored((cum_g[..., :, None] - cum_g[..., None, :]).masked_fill_(upper, float("-inf")))
    decay_in = _exp_floored(cum_g.clone())  # from the chunk start to token i
    decay_out = _exp_floored(cum_g[..., -1:] - cum_g)  # from token i to the chunk end
    ut_system = (k @ k.mT).mul(decay).mul_(beta[..., None])
    scores = decay.mul_(q @ k.mT)  # the last use of decay

    # UT transform: (I + strictly_lower(ut_system)) [u | w] = [beta v | -beta exp(G) k]; w is negated so
    # that both uses below are additions. The right-hand side is column-major, which LAPACK solves in
    # place; unitriangular=True ignores the diagonal, so the lower triangle with diagonal is passed as is.
    uw = q.new_empty(*group_shape[:4], head_v_dim + head_k_dim, chunk_size).mT
    torch.mul(v, beta[..., None], out=uw[..., :head_v_dim])
    torch.mul(k, (-beta * decay_in)[..., None], out=uw[..., head_v_dim:])
    torch.linalg.solve_triangular(ut_system, uw, upper=False, unitriangular=True, out=uw)

    # Output of a chunk: o = q exp(G) S_c + scores (u - w S_c) = (q exp(G) - scores w) S_c + scores u.
    # State: S_{c+1} = exp(G_last) S_c + k_dec^T (u - w S_c) = M S_c + B.
    scores_uw = scores @ uw
    q_read = torch.addcmul(scores_uw[..., head_v_dim:], q, decay_in[..., None])
    k_dec = k * decay_out[..., None]
    affine = k_dec.mT @ uw  # [B | M - exp(G_last) I]
    affine[..., head_v_dim:].diagonal(dim1=-2, dim2=-1).add_(decay_in[..., -1:])

    num_states = batch_size * num_v_heads
    update = affine[..., :head_v_dim].reshape(num_chunks, num_states, head_k_dim, head_v_dim)
    transition = affine[..., head_v_dim:].reshape(num_chunks, num_states, head_k_dim, head_k_dim)
    states = q.new_empty(num_chunks + 1, num_states, head_k_dim, head_v_dim)
    if initial_state is None:
        states[0] = 0
    else:
        states[0] = initial_state.reshape(num_states, head_k_dim, head_v_dim)
    for c in range(num_chunks):
        torch.baddbmm(update[c], transition[c], states[c], out=states[c + 1])

    flat = (-1, chunk_size)
    o = torch.baddbmm(
        scores_uw[..., :head_v_dim].reshape(*flat, head_v_dim),
        q_read.reshape(*flat, head_k_dim),
        states[:-1].view(-1, head_k_dim, head_v_dim),
    )
    # `[n, B, Hv, C, V]` -> `[B, T, Hv, V]`, one copy that also drops the padding and casts.
    o = o.view(num_chunks, batch_size, num_v_heads, chunk_size, head_v_dim).permute(1, 0, 3, 2, 4)
    o = o.reshape(batch_size, -1, num_v_heads, head_v_dim)[:, :seq_len].to(out_dtype, copy=True)

    state_shape = (batch_size, num_v_heads, head_k_dim, head_v_dim)
    checkpoints = []
    for offset in checkpoint_offsets:
        c, p = divmod(offset, chunk_size)
        if p == 0:
            checkpoints.append(states[c].view(state_shape))
            continue
        # Rows < p of u and w depend only on the first p tokens of the chunk (the solve is triangular).
        chunk_start = states[c].view(*group_shape[1:4], head_k_dim, head_v_dim)
        u_p, w_p = uw[c, ..., :p, :].split([head_v_dim, head_k_dim], dim=-1)
        cum_g_p = cum_g[c, ..., :p]
        k_dec_p = k[c, ..., :p, :] * _exp_floored(cum_g_p[..., -1:] - cum_g_p)[..., None]
        state = chunk_start * decay_in[c, ..., p - 1, None, None] + k_dec_p.mT @ (u_p + w_p @ chunk_start)
        checkpoints.append(state.view(state_shape))
    checkpoint_states = torch.stack(checkpoints) if checkpoints else states.new_zeros((0, *state_shape))
    # Clone so the returned state does not keep every chunk-start state alive.
    return o, states[-1].view(state_shape).clone(), checkpoint_states
