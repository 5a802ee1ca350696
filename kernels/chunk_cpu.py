"""Fast chunked gated delta rule for CPU tensors, in plain PyTorch (batched matmuls, no per-token loop).

Same contract as `chunk_gated_delta_rule_ref` in `reference.py`; the Triton kernels live elsewhere.
Memory is linear in T: every chunk-start state is kept (`[T / 64 + 1, B, Hv, K, V]` fp32) beside about ten
`[T / 64, B, Hv, 64, 64]`-sized fp32 intermediates, each as large as v in fp32 when K = V = 64.
"""

import math

import torch
import torch.nn.functional as F

# Intra-chunk work grows with the chunk size, the sequential loop shrinks with it. At T=2048 on the tiny
# benchmark model's shapes (one thread, paired runs) 32 and 64 tie and 128 is ~25 % slower.
CHUNK_SIZE = 64
# Decays below exp(-30) ≈ 1e-13 are flushed to exactly zero: far below fp32 resolution, and without the
# flush the strong decays of real models (g ≈ -10 per token) fill the matmuls and the triangular solve with
# denormal products, which run an order of magnitude slower on x86.
LOG_DECAY_FLOOR = -30.0


def _exp_floored(log_decay: torch.Tensor) -> torch.Tensor:
    """exp(log_decay), in place, flushed to 0 wherever log_decay <= LOG_DECAY_FLOOR (-inf included)."""
    # Clamp first: exp of -inf or of a very negative number takes a slow path (5-50x slower).
    decay = log_decay.clamp_(min=LOG_DECAY_FLOOR - 1).exp_()
    return F.threshold_(decay, math.exp(LOG_DECAY_FLOOR), 0.0)


def _l2_normalize_(x_t: torch.Tensor, scale: float) -> torch.Tensor:
    """reference.l2_normalize, times scale, in place, on a time-last `[..., D, C]` tensor (norm over D)."""
    sum_of_squares = (x_t * x_t).sum(dim=-2, keepdim=True)  # vector_norm is 5x slower over a strided dim
    return x_t.mul_(sum_of_squares.add_(1e-6).rsqrt_().mul_(scale))


def _to_chunks(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """`[B, T, H, D]` -> fp32 `[num_chunks, B, H, D, chunk_size]`, or `[B, T, H]` -> `[num_chunks, B, H,
    chunk_size]`, zero-padded at the end of T.

    Chunk-major, so that each chunk's operands in the sequential loop are one contiguous block; time-last,
    so that beta * k and beta * v are the column-major right-hand sides the triangular solve wants, and so
    that copying from Qwen3-Next's q, k, v (views of a `[B, H * D, T]` conv output) reads along T. Padded
    tokens get k = 0, beta = 0 and g = 0: identity steps, which leave the final state unchanged.
    """
    batch_size, seq_len, num_heads, *dims = x.shape
    num_full, tail = divmod(seq_len, chunk_size)
    num_chunks = num_full + (tail > 0)
    out = x.new_empty((num_chunks, batch_size, num_heads, *dims, chunk_size), dtype=torch.float32)
    by_token = out.movedim(-1, 2).transpose(0, 1)  # a `[B, num_chunks, C, H, *D]` view
    by_token[:, :num_full] = x[:, : num_full * chunk_size].unflatten(1, (num_full, chunk_size))
    if tail:
        by_token[:, num_full, :tail] = x[:, num_full * chunk_size :]
        by_token[:, num_full, tail:] = 0
    return out


def _group_matmul(shared: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """shared @ x for the r value heads of each key head, as one matmul and without expanding `shared`.

    Args:
        shared: `[n, B, Hk, 1, M, C]`; x: `[n, B, Hk, r, C, N]`, a transposed view of a contiguous tensor.

    Returns:
        `[n, B, Hk, r, M, N]`, a transposed view of a contiguous tensor.
    """
    *batch, group_size, cols, inner = x.mT.shape
    product_t = x.mT.reshape(*batch, group_size * cols, inner) @ shared.squeeze(3).mT
    return product_t.view(*batch, group_size, cols, -1).mT


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

    # Key-side tensors `[n, B, Hk, 1, K, C]`, value-side `[n, B, Hk, r, V, C]`, time-last (suffix _t): the
    # group dim r broadcasts, so q and k are shared without repeat_interleave and normalised once.
    q_t = _to_chunks(q, chunk_size).unsqueeze(3)
    k_t = _to_chunks(k, chunk_size).unsqueeze(3)
    if use_qk_l2norm:
        _l2_normalize_(q_t, scale)
        _l2_normalize_(k_t, 1.0)
    else:
        q_t.mul_(scale)
    q, k = q_t.mT, k_t.mT
    num_chunks = k.shape[0]
    group_shape = (num_chunks, batch_size, num_k_heads, group_size, chunk_size)
    v_t = _to_chunks(v, chunk_size).view(*group_shape[:4], head_v_dim, chunk_size)
    g = _to_chunks(g, chunk_size).view(group_shape)
    beta = _to_chunks(beta, chunk_size).view(group_shape)

    # Log decay from the chunk start, G. decay[i, j] = exp(G_i - G_j) for j <= i, 0 above the diagonal (a
    # -inf mask, added: 10x faster than masked_fill): no exp of a positive number, so nothing overflows.
    cum_g = g.cumsum(-1)
    causal_mask = torch.full((chunk_size, chunk_size), float("-inf")).triu_(1)
    decay = _exp_floored((cum_g[..., :, None] - cum_g[..., None, :]).add_(causal_mask))
    decay_in = _exp_floored(cum_g.clone())  # from the chunk start to token i
    decay_out = _exp_floored(cum_g[..., -1:] - cum_g)  # from token i to the chunk end
    decay_last = decay_in[..., -1, None, None]  # over the whole chunk
    kk = k @ k.mT
    qk = q @ k.mT
    ut_plain = kk * beta[..., None]  # beta_i k_i.k_j, rows of the value heads
    ut_decayed = ut_plain * decay
    scores = decay.mul_(qk)  # the last use of decay; zero above the diagonal
    causal_qk = qk.tril_()

    # UT transform, per chunk: u = (I + strictly_lower(ut_decayed))^-1 beta v. The solve for w, the
    # decayed keys, factors out their decay exactly: w = exp(G) w_plain with w_plain = (I +
    # strictly_lower(ut_plain))^-1 beta k, of norm <= 1 for unit keys (products of contractions). Solving
    # for w directly would build exp(G_i) out of products of small decays, which underflow into denormals.
    # unitriangular=True reads only the strict lower triangle; the column-major right-hand sides (time-last
    # tensors, transposed) are solved in place.
    u = v_t.mul_(beta[..., None, :]).mT
    torch.linalg.solve_triangular(ut_decayed, u, upper=False, unitriangular=True, out=u)
    w_plain = (k_t * beta[..., None, :]).mT
    torch.linalg.solve_triangular(ut_plain, w_plain, upper=False, unitriangular=True, out=w_plain)

    # Output of a chunk: o = q exp(G) S_c + scores (u - w S_c) = q_read S_c + scores u, with
    # q_read = q exp(G) - scores w = exp(G) (q - causal_qk w_plain).
    # State: S_{c+1} = exp(G_last) S_c + k_dec^T (u - w S_c) = M S_c + B, with k_dec^T w = exp(G_last)
    # k^T w_plain, so M = exp(G_last) (I - k^T w_plain) and B = k_dec^T u.
    q_read = _group_matmul(causal_qk, w_plain).sub_(q).mul_(-decay_in[..., None])
    transition = _group_matmul(k_t, w_plain).mul_(-decay_last)
    transition.diagonal(dim1=-2, dim2=-1).add_(decay_last[..., 0])

    # states[c] is the state at the start of chunk c; states[c + 1] starts as B and gets M S_c added.
    num_states = batch_size * num_v_heads
    states = q.new_empty(num_chunks + 1, num_states, head_k_dim, head_v_dim)
    states[0] = 0 if initial_state is None else initial_state.reshape(num_states, head_k_dim, head_v_dim)
    torch.matmul(k_t * decay_out[..., None, :], u, out=states[1:].view(*group_shape[:4], head_k_dim, head_v_dim))
    transition = transition.reshape(num_chunks, num_states, head_k_dim, head_k_dim)
    for c in range(num_chunks):
        states[c + 1].baddbmm_(transition[c], states[c])

    flat = (-1, chunk_size)
    o = (scores @ u).view(*flat, head_v_dim)
    o.baddbmm_(q_read.reshape(*flat, head_k_dim), states[:-1].view(-1, head_k_dim, head_v_dim))
    # `[n, B, Hv, C, V]` -> `[B, T, Hv, V]`, one copy that also casts; padding is dropped after it.
    o_chunks = o.view(num_chunks, batch_size, num_v_heads, chunk_size, head_v_dim).permute(1, 0, 3, 2, 4)
    o = o.new_empty(o_chunks.shape, dtype=out_dtype).copy_(o_chunks).flatten(1, 2)
    o = o[:, :seq_len] if batch_size == 1 or seq_len == o.shape[1] else o[:, :seq_len].contiguous()

    state_shape = (batch_size, num_v_heads, head_k_dim, head_v_dim)
    checkpoints = []
    for offset in checkpoint_offsets:
        c, p = divmod(offset, chunk_size)
        if p == 0:
            checkpoints.append(states[c].view(state_shape))
            continue
        # The chunk's update restricted to its first p tokens: rows < p of u and w_plain depend only on
        # those tokens (the solves are triangular).
        chunk_start = states[c].view(*group_shape[1:4], head_k_dim, head_v_dim)
        k_p, cum_g_p = k[c, ..., :p, :], cum_g[c, ..., :p]
        k_dec_p = k_p * _exp_floored(cum_g_p[..., -1:] - cum_g_p)[..., None]
        state = chunk_start - k_p.mT @ (w_plain[c, ..., :p, :] @ chunk_start)
        state = state.mul_(decay_in[c, ..., p - 1, None, None]) + k_dec_p.mT @ u[c, ..., :p, :]
        checkpoints.append(state.view(state_shape))
    checkpoint_states = torch.stack(checkpoints) if checkpoints else states.new_zeros((0, *state_shape))
    # Clone so the returned state does not keep every chunk-start state alive.
    return o, states[-1].view(state_shape).clone(), checkpoint_states
