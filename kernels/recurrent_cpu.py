"""Gated delta rule decode step(s) for CPU tensors in plain PyTorch, the fp32 state updated in place.

Same contract as `recurrent_gated_delta_rule_ref` in `reference.py`, without its per-step state copies.
The Triton kernel lives in `recurrent_triton.py`.
"""

import torch

from .reference import l2_normalize


def recurrent_gated_delta_rule_cpu(q, k, v, g, beta, state, use_qk_l2norm=True, scale=None) -> torch.Tensor:
    """q, k `[B, T, Hk, K]`; v `[B, T, Hv, V]`; beta `[B, T, Hv]`; g `[B, T, Hv]` (per head) or `[B, T, Hv, K]`
    (per key channel, KDA); state `[B, Hv, K, V]` fp32, in place.

    Returns o `[B, T, Hv, V]` in q's dtype.
    """
    out_dtype, group_size = q.dtype, v.shape[2] // q.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k = (x.float().repeat_interleave(group_size, dim=2) for x in (q, k))
    if use_qk_l2norm:
        q, k = l2_normalize(q), l2_normalize(k)
    v, beta = v.float(), beta.float()
    decay = g.float().exp()[..., None, None] if g.dim() == 3 else g.float().exp()[..., None]  # [B, T, Hv, 1 or K, 1]
    o = torch.empty_like(v)
    for t in range(v.shape[1]):
        state.mul_(decay[:, t])
        delta = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhk,bhkv->bhv", k[:, t], state))
        state.add_(k[:, t, :, :, None] * delta[:, :, None, :])
        o[:, t] = scale * torch.einsum("bhk,bhkv->bhv", q[:, t], state)
    return o.to(out_dtype)
