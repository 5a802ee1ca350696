"""Chunked delta rule with a decay per key channel (KDA, Kimi-Linear's delta attention) for CPU tensors, in
plain PyTorch: the gated delta rule of `chunk_cpu.py` where row i of the state decays by exp(g_t[i]).

Same contract as `chunk_gated_delta_rule_ref` with g `[B, T, Hv, K]`. The chunk form is the same UT
transform; what changes is that a decay between tokens j < i is a vector, exp(G_i - G_j) over K, so the
chunk's k_i . k_j and q_i . k_j products are decay-weighted sums over K (elementwise, not one matmul) and the
chunk's effect on the state starts with diag(exp(G_last)) rather than a scalar. Factoring that decay as
exp(G_i) exp(-G_j) would make it a matmul but overflows fp32 under the strong decays of real models, so it
is summed as it is. Memory: per chunk group, a `[chunks, B, Hv, C, C, K]` fp32 decay tensor, bounded by
DECAY_ELEMENTS; everything else is linear in T, as in `chunk_cpu.py`.
"""

import torch

from .chunk_cpu import _exp_floored, _l2_normalize_, _to_chunks

# The elementwise decay products grow with the chunk (T * C * K per head), the sequential loop over chunks
# shrinks with it: at T = 2048, 8 heads of K = V = 64, 16 tokens took 0.46 s, 32 took 1.1 s, 64 took 1.3 s
# (transformers' torch chunk_kda: 2.1 s), on 2 threads.
CHUNK_SIZE = 16
# The decay tensor of one group of chunks holds at most this many fp32 elements (64 MiB).
DECAY_ELEMENTS = 16 * 2**20


def _decayed_products(q, k, cum_g, chunk_size):
    """Per chunk, with D[i, j] = exp(G_i - G_j) (over K) for j <= i and 0 above the diagonal:
    kk[i, j] = sum_K k_i k_j D[i, j] and qk[i, j] = sum_K q_i k_j D[i, j], both `[n, B, H, C, C]` fp32.

    q, k, cum_g: `[n, B, H, C, K]`. Computed a group of chunks at a time, so that D stays within DECAY_ELEMENTS.
    """
    kk, qk = (k.new_empty(*k.shape[:-1], chunk_size) for _ in range(2))
    causal_mask = torch.full((chunk_size, chunk_size), float("-inf")).triu_(1)[..., None]
    per_chunk = k[0].numel() * chunk_size
    group = max(1, DECAY_ELEMENTS // per_chunk)
    for begin in range(0, k.shape[0], group):
        end = min(begin + group, k.shape[0])
        g = cum_g[begin:end]
        decay = _exp_floored((g[..., :, None, :] - g[..., None, :, :]).add_(causal_mask))  # [.., C, C, K]
        k_j = k[begin:end, ..., None, :, :]
        kk[begin:end] = (decay * k_j).mul_(k[begin:end, ..., :, None, :]).sum(-1)
        qk[begin:end] = decay.mul_(k_j).mul_(q[begin:end, ..., :, None, :]).sum(-1)
    return kk, qk


def chunk_kda_cpu(
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
    """Delta rule with a decay per key channel over chunks of tokens, in fp32.

    Per chunk (G: the cumulative log decay from the chunk start, `[C, K]`), the UT transform gives
    u = (I + A)^-1 diag(beta) V and w = (I + A)^-1 diag(beta) (K * exp(G)), A[i, j] = beta_i kk[i, j] for
    j < i. Then, with v_new = u - w S_c:
        o = (q * exp(G)) S_c + qk v_new,   S_{c+1} = diag(exp(G_last)) S_c + (k * exp(G_last - G))^T v_new,
    an affine map S_{c+1} = M S_c + B computed for every chunk at once; only M S_c + B runs chunk by chunk.

    Args:
        q, k: `[B, T, Hk, K]`; v: `[B, T, Hv, V]` with Hv a multiple of Hk; g (log decay, <= 0): `[B, T, Hv, K]`;
            beta: `[B, T, Hv]`.
        initial_state: `[B, Hv, K, V]` or None (zeros).
        checkpoint_offsets: strictly increasing ints in [1, T]: also return the state after that many tokens.
        use_qk_l2norm: L2-normalise q and k per head first. scale: defaults to K ** -0.5.

    Returns:
        o `[B, T, Hv, V]` in q's dtype, the final state `[B, Hv, K, V]` fp32, and the checkpoint states
        `[len(checkpoint_offsets), B, Hv, K, V]` fp32.
    """
    out_dtype = q.dtype
    batch_size, seq_len, num_k_heads, head_k_dim = k.shape
    num_heads, head_v_dim = v.shape[2:]
    scale = head_k_dim**-0.5 if scale is None else scale
    chunk_size = min(CHUNK_SIZE, seq_len)
    # Each value head decays its keys its own way: the key heads are expanded, not shared.
    q, k = (x.repeat_interleave(num_heads // num_k_heads, dim=2) for x in (q, k))

    # Time-last chunks `[n, B, H, D, C]` (suffix _t), read token-major through .mT.
    q_t, k_t = _to_chunks(q, chunk_size), _to_chunks(k, chunk_size)
    if use_qk_l2norm:
        _l2_normalize_(q_t, scale)
        _l2_normalize_(k_t, 1.0)
    else:
        q_t.mul_(scale)
    q, k = q_t.mT, k_t.mT
    num_chunks = k.shape[0]
    v = _to_chunks(v, chunk_size).mT
    beta = _to_chunks(beta, chunk_size)[..., None]  # [n, B, H, C, 1]
    cum_g = _to_chunks(g, chunk_size).mT.cumsum(-2)  # [n, B, H, C, K]

    kk, scores = _decayed_products(q, k, cum_g, chunk_size)
    decay_in = _exp_floored(cum_g.clone())  # from the chunk start to token i
    decay_last = decay_in[..., -1, :]  # over the whole chunk, [n, B, H, K]
    decay_out = _exp_floored(cum_g[..., -1:, :] - cum_g)  # from token i to the chunk end

    # unitriangular=True reads only the strict lower triangle of kk * beta: A.
    ut = kk.mul_(beta)
    u = torch.linalg.solve_triangular(ut, v * beta, upper=False, unitriangular=True)
    w = torch.linalg.solve_triangular(ut, k * beta * decay_in, upper=False, unitriangular=True)

    # o = q_read S_c + scores u with q_read = q exp(G) - scores w; M = diag(exp(G_last)) - k_out^T w, B = k_out^T u.
    q_read = (q * decay_in).sub_(scores @ w)
    k_out = k * decay_out
    transition = (k_out.mT @ w).neg_()
    transition.diagonal(dim1=-2, dim2=-1).add_(decay_last)

    # states[c] is the state at the start of chunk c; states[c + 1] starts as B and gets M S_c added.
    num_states = batch_size * num_heads
    states = q.new_empty(num_chunks + 1, num_states, head_k_dim, head_v_dim)
    states[0] = 0 if initial_state is None else initial_state.reshape(num_states, head_k_dim, head_v_dim)
    torch.matmul(k_out.mT, u, out=states[1:].view(num_chunks, batch_size, num_heads, head_k_dim, head_v_dim))
    transition = transition.reshape(num_chunks, num_states, head_k_dim, head_k_dim)
    for c in range(num_chunks):
        states[c + 1].baddbmm_(transition[c], states[c])

    chunk_states = states[:-1].view(num_chunks, batch_size, num_heads, head_k_dim, head_v_dim)
    o = (scores @ u).add_(q_read @ chunk_states)  # [n, B, H, C, V]
    o = o.permute(1, 0, 3, 2, 4).reshape(batch_size, num_chunks * chunk_size, num_heads, head_v_dim)
    o = o[:, :seq_len].to(out_dtype)

    state_shape = (batch_size, num_heads, head_k_dim, head_v_dim)
    checkpoints = []
    for offset in checkpoint_offsets:
        c, p = divmod(offset, chunk_size)
        if p == 0:
            checkpoints.append(states[c].view(state_shape))
            continue
        # The chunk's update restricted to its first p tokens (rows < p of u and w depend only on those).
        chunk_start = chunk_states[c]
        cum_g_p = cum_g[c, ..., :p, :]
        k_dec_p = k[c, ..., :p, :] * _exp_floored(cum_g_p[..., -1:, :] - cum_g_p)
        v_new_p = u[c, ..., :p, :] - w[c, ..., :p, :] @ chunk_start
        state = chunk_start * decay_in[c, ..., p - 1, :, None] + k_dec_p.mT @ v_new_p
        checkpoints.append(state)
    checkpoint_states = torch.stack(checkpoints) if checkpoints else states.new_zeros((0, *state_shape))
    # Clone so the returned state does not keep every chunk-start state alive.
    return o, states[-1].view(state_shape).clone(), checkpoint_states
