"""Gated delta rule decode step(s) for CPU tensors in plain PyTorch, the fp32 state updated in place.

Same contract as `recurrent_gated_delta_rule_ref` in `reference.py`, without its per-step state copies.
The Triton kernel lives in `recurrent_triton.py`.
"""

import torch

from .reference import l2_normalize


def recurrent_gated_delta_rule_cpu(q, k, v, g, beta, state, use_qk_l2norm=True, scale=None) -> torch.Tensor:
    """q, k `[B, T, Hk, K]`; v `[B, T, Hv, V]`; g, beta `[B, T, Hv]`; state `[B, Hv, K, V]` fp32, in place.

    Returns o `[B, T, Hv, V]` in q's dtype.
    """
    out_dtype, group_size = q.dtype, v.shape[2] // q.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k = (x.float().repeat_interleave(group_size, dim=2) for x in (q, k))
    if use_qk_l2norm:
        q, k = l2_normalize(q), l2_normalize(k)
    v, decay, beta = v.float(), g.float().exp(), beta.float()
    o = torch.empty_like(v)
    for t in range(v.shape[1]):
        state.mul_(decay[:, t, :, None, None])
        delta = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhk,bhkv->bhv", k[:, t], state))
        state.add_(k[:, t, :, :, None] * delta[:, :, None, :])
        o[:, t] = scale * torch.einsum("bhk,bhkv->bhv", q[:, t], state)
    return o.to(out_dtype)
