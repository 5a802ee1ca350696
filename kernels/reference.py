"""Plain PyTorch references for every op in this package: the test oracles, written for clarity, not speed.

Each `<op>_ref` has the signature and return convention of the public `<op>` in `dispatch.py`.
"""

import torch
import torch.nn.functional as F


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dim, as fla and transformers compute it."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def _empty_checkpoints(batch_size, *shape, like: torch.Tensor) -> torch.Tensor:
    return like.new_zeros((0, batch_size, *shape))


def chunk_gated_delta_rule_ref(
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
    """Gated delta rule, one token at a time, in fp32.

    Per value head h and token t (S is [K, V]):
        S = diag(exp(g_t)) S;  S = S + k_t (beta_t (v_t - k_t^T S))^T;  o_t = scale * q_t^T S
    with g_t one log decay per head (Gated-DeltaNet: every row of S decays alike) or one per key channel
    (KDA, Kimi-Linear's delta attention: row i of S decays by exp(g_t[i])).

    Args:
        q, k: `[B, T, Hk, K]`; v: `[B, T, Hv, V]` with Hv a multiple of Hk (value head h reads key head
            h // (Hv // Hk)); beta: `[B, T, Hv]`; g (log decay, <= 0): `[B, T, Hv]` per head or `[B, T, Hv, K]`
            per key channel.
        initial_state: `[B, Hv, K, V]` or None (zeros).
        checkpoint_offsets: strictly increasing ints in [1, T]: also return the state after that many tokens.
        use_qk_l2norm: L2-normalise q and k per head first. scale: defaults to K ** -0.5.

    Returns:
        o `[B, T, Hv, V]` in q's dtype, the final state `[B, Hv, K, V]` fp32, and the checkpoint states
        `[len(checkpoint_offsets), B, Hv, K, V]` fp32.
    """
    out_dtype = q.dtype
    batch_size, seq_len, num_k_heads, head_k_dim = k.shape
    num_v_heads = v.shape[2]
    group_size = num_v_heads // num_k_heads
    scale = head_k_dim**-0.5 if scale is None else scale
    q, k = (x.float().repeat_interleave(group_size, dim=2) for x in (q, k))
    if use_qk_l2norm:
        q, k = l2_normalize(q), l2_normalize(k)
    v, g, beta = v.float(), g.float(), beta.float()

    state = (
        torch.zeros(batch_size, num_v_heads, head_k_dim, v.shape[-1], dtype=torch.float32, device=v.device)
        if initial_state is None
        else initial_state.float().clone()
    )
    outputs, checkpoints = [], []
    wanted = set(checkpoint_offsets)
    decay = g.exp()[..., None, None] if g.dim() == 3 else g.exp()[..., None]  # [B, T, Hv, 1 or K, 1]
    for t in range(seq_len):
        state = state * decay[:, t]
        predicted = torch.einsum("bhk,bhkv->bhv", k[:, t], state)
        delta = beta[:, t, :, None] * (v[:, t] - predicted)
        state = state + k[:, t, :, :, None] * delta[:, :, None, :]
        outputs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], state))
        if t + 1 in wanted:
            checkpoints.append(state.clone())
    o = torch.stack(outputs, dim=1).to(out_dtype)
    checkpoint_states = (
        torch.stack(checkpoints) if checkpoints else _empty_checkpoints(batch_size, *state.shape[1:], like=state)
    )
    return o, state, checkpoint_states


def recurrent_gated_delta_rule_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    use_qk_l2norm: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """A few decode steps; `state` `[B, Hv, K, V]` fp32 is updated in place. Returns o `[B, T, Hv, V]`."""
    o, final_state, _ = chunk_gated_delta_rule_ref(
        q, k, v, g, beta, initial_state=state, use_qk_l2norm=use_qk_l2norm, scale=scale
    )
    state.copy_(final_state)
    return o


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    conv_state: torch.Tensor | None = None,
    activation: str | None = "silu",
    checkpoint_offsets: list[int] | tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Depthwise causal conv1d over `[conv_state | x]`, optionally followed by SiLU.

    Args:
        x: `[B, D, T]`; weight: `[D, W]`; bias: `[D]` or None.
        conv_state: `[B, D, W]`, the last W inputs before x (zeros when None), as transformers keeps it.
        checkpoint_offsets: strictly increasing ints in [1, T].

    Returns:
        out `[B, D, T]` in x's dtype, the new conv state `[B, D, W]` (the last W inputs of `[conv_state | x]`),
        and the conv states after each checkpoint offset `[N, B, D, W]`.
    """
    batch_size, dim, seq_len = x.shape
    width = weight.shape[1]
    if conv_state is None:
        conv_state = x.new_zeros(batch_size, dim, width)
    full = torch.cat([conv_state.to(x.dtype), x], dim=-1)
    out = F.conv1d(full.to(weight.dtype), weight.unsqueeze(1), bias, groups=dim)[..., -seq_len:]
    if activation == "silu":
        out = F.silu(out)
    elif activation is not None:
        raise ValueError(f"activation must be 'silu' or None, got {activation!r}")
    checkpoints = [full[..., offset : offset + width] for offset in checkpoint_offsets]
    checkpoint_states = (
        torch.stack(checkpoints) if checkpoints else _empty_checkpoints(batch_size, dim, width, like=full)
    )
    return out.to(x.dtype), full[..., -width:].clone(), checkpoint_states


def causal_conv1d_update_ref(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """Decode step(s): x `[B, D, T]` (T small); `conv_state` `[B, D, W]` is updated in place. Returns `[B, D, T]`."""
    out, new_state, _ = causal_conv1d_ref(x, weight, bias, conv_state=conv_state, activation=activation)
    conv_state.copy_(new_state)
    return out


def discretized_dt(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_limit: tuple[float, float]) -> torch.Tensor:
    """Mamba2's step size: softplus(dt + dt_bias) clamped to `dt_limit`, in fp32. dt `[..., H]`."""
    dt = dt.float() + (0.0 if dt_bias is None else dt_bias.float())
    return F.softplus(dt).clamp(min=dt_limit[0], max=dt_limit[1])


def chunk_ssd_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    initial_state: torch.Tensor | None = None,
    checkpoint_offsets: list[int] | tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mamba2's selective state space scan (SSD), one token at a time, in fp32.

    Per head h (group g = h // (H // G)) and token t, with S `[P, N]`:
        d = softplus(dt_t + dt_bias) clamped;  S = exp(d A) S + d x_t B_t^T;  y_t = S C_t + D x_t

    Args:
        x: `[B, T, H, P]`; dt: `[B, T, H]` (before bias and softplus); A: `[H]` (negative: -exp(A_log));
            B, C: `[B, T, G, N]` with H a multiple of G; D, dt_bias: `[H]` or None.
        dt_limit: (min, max) of the step size after softplus.
        initial_state: `[B, H, P, N]` or None (zeros).
        checkpoint_offsets: strictly increasing ints in [1, T]: also return the state after that many tokens.

    Returns:
        y `[B, T, H, P]` in x's dtype, the final state `[B, H, P, N]` fp32, and the checkpoint states
        `[len(checkpoint_offsets), B, H, P, N]` fp32.
    """
    batch_size, seq_len, num_heads, head_dim = x.shape
    group_size = num_heads // B.shape[2]
    B, C = (t.float().repeat_interleave(group_size, dim=2) for t in (B, C))
    step = discretized_dt(dt, dt_bias, dt_limit)
    decay = torch.exp(step * A.float())  # [B, T, H]
    state = (
        torch.zeros(batch_size, num_heads, head_dim, B.shape[-1], dtype=torch.float32, device=x.device)
        if initial_state is None
        else initial_state.float().clone()
    )
    outputs, checkpoints, wanted = [], [], set(checkpoint_offsets)
    for t in range(seq_len):
        update = (step[:, t, :, None] * x[:, t].float())[..., None] * B[:, t, :, None, :]
        state = decay[:, t, :, None, None] * state + update
        y = torch.einsum("bhpn,bhn->bhp", state, C[:, t])
        if D is not None:
            y = y + D.float()[:, None] * x[:, t].float()
        outputs.append(y)
        if t + 1 in wanted:
            checkpoints.append(state.clone())
    checkpoint_states = (
        torch.stack(checkpoints) if checkpoints else _empty_checkpoints(batch_size, *state.shape[1:], like=state)
    )
    return torch.stack(outputs, dim=1).to(x.dtype), state, checkpoint_states


def recurrent_ssd_ref(x, dt, A, B, C, D, dt_bias, dt_limit, state) -> torch.Tensor:
    """A few decode steps; `state` `[B, H, P, N]` fp32 is updated in place. Returns y `[B, T, H, P]`."""
    y, final_state, _ = chunk_ssd_ref(x, dt, A, B, C, D, dt_bias, dt_limit, initial_state=state)
    state.copy_(final_state)
    return y


def selective_scan_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    checkpoint_offsets: list[int] | tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mamba's (v1: Jamba's) selective scan, one token at a time, in fp32.

    Per channel d (in group g = d // (D // G)) and token t, with S `[D, N]` (a decay per channel and state element):
        s = softplus(dt_t + dt_bias);  S[d] = exp(s[d] A[d]) S[d] + s[d] x_t[d] B_t[g];  y_t[d] = S[d] . C_t[g] + D[d] x_t[d]

    Args:
        x, dt: `[B, T, D]` (dt before bias and softplus); A: `[D, N]` (negative: -exp(A_log)); B, C: `[B, T, N]`
            (one group, Jamba) or `[B, T, G, N]` with D a multiple of G (Zamba's heads); D (the skip), dt_bias: `[D]`
            or None.
        initial_state: `[B, D, N]` or None (zeros), as transformers keeps it.
        checkpoint_offsets: strictly increasing ints in [1, T]: also return the state after that many tokens.

    Returns:
        y `[B, T, D]` in x's dtype, the final state `[B, D, N]` fp32, and the checkpoint states
        `[len(checkpoint_offsets), B, D, N]` fp32.
    """
    batch_size, seq_len, dim = x.shape
    B, C = (per_channel(t, dim) for t in (B, C))  # [B, T, D, N]
    step = F.softplus(dt.float() + (0.0 if dt_bias is None else dt_bias.float()))
    state = (
        torch.zeros(batch_size, dim, A.shape[1], dtype=torch.float32, device=x.device)
        if initial_state is None
        else initial_state.float().clone()
    )
    outputs, checkpoints, wanted = [], [], set(checkpoint_offsets)
    for t in range(seq_len):
        decay = torch.exp(step[:, t, :, None] * A.float())
        state = decay * state + (step[:, t] * x[:, t].float())[..., None] * B[:, t]
        y = torch.einsum("bdn,bdn->bd", state, C[:, t])
        if D is not None:
            y = y + D.float() * x[:, t].float()
        outputs.append(y)
        if t + 1 in wanted:
            checkpoints.append(state.clone())
    checkpoint_states = (
        torch.stack(checkpoints) if checkpoints else _empty_checkpoints(batch_size, *state.shape[1:], like=state)
    )
    return torch.stack(outputs, dim=1).to(x.dtype), state, checkpoint_states


def per_channel(x: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C of the selective scan, `[B, T, N]` or `[B, T, G, N]`, as `[B, T, D, N]` fp32 (channel d reads group
    d // (D // G))."""
    x = x.float()
    if x.dim() == 3:
        return x[:, :, None, :].expand(-1, -1, dim, -1)
    return x.repeat_interleave(dim // x.shape[2], dim=2)


def recurrent_selective_scan_ref(x, dt, A, B, C, D, dt_bias, state) -> torch.Tensor:
    """A few decode steps; `state` `[B, D, N]` fp32 is updated in place. Returns y `[B, T, D]`."""
    y, final_state, _ = selective_scan_ref(x, dt, A, B, C, D, dt_bias, initial_state=state)
    state.copy_(final_state)
    return y
