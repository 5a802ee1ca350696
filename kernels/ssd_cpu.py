"""Mamba2's SSD scan for CPU tensors in plain PyTorch: chunked (inside a chunk as decay-masked attention, across
chunks through the state), with the states after the checkpoint offsets taken inside the same pass: the chunks
also end at every offset, so those states are chunk-end states. Decode steps update the state in place.

Same contracts as `chunk_ssd_ref` / `recurrent_ssd_ref` in `reference.py`; the Triton kernels live in
`ssd_triton.py`.
"""

import torch

from .reference import discretized_dt

CHUNK_SIZE = 64


def chunk_bounds(seq_len: int, checkpoint_offsets: tuple[int, ...], chunk_size: int) -> list[int]:
    """Where chunks start and end: every `chunk_size` tokens and at each checkpoint offset, from 0 to seq_len."""
    return sorted({*range(0, seq_len, chunk_size), *checkpoint_offsets, seq_len})


def chunk_ssd_cpu(
    x, dt, A, B, C, D=None, dt_bias=None, dt_limit=(0.0, float("inf")), initial_state=None, checkpoint_offsets=()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x `[B, T, H, P]`; dt `[B, T, H]`; A, D, dt_bias `[H]`; B, C `[B, T, G, N]`; initial_state `[B, H, P, N]`.

    Returns y `[B, T, H, P]` in x's dtype, the final state and the checkpoint states (`[len(offsets), B, H, P,
    N]`), fp32.
    """
    batch_size, seq_len, num_heads, head_dim = x.shape
    group_size = num_heads // B.shape[2]
    step = discretized_dt(dt, dt_bias, dt_limit)
    log_decay = (step * A.float()).transpose(1, 2)  # [B, H, T]
    xs = x.float() * step[..., None]  # the input as the state takes it: d_t x_t
    B, C = (t.float().repeat_interleave(group_size, dim=2) for t in (B, C))  # [B, T, H, N]
    state = (
        x.new_zeros(batch_size, num_heads, head_dim, B.shape[-1], dtype=torch.float32)
        if initial_state is None
        else initial_state.float().clone()
    )
    y = torch.empty(batch_size, seq_len, num_heads, head_dim, dtype=torch.float32, device=x.device)
    checkpoints, wanted = [], set(checkpoint_offsets)
    bounds = chunk_bounds(seq_len, tuple(checkpoint_offsets), CHUNK_SIZE)
    for start, end in zip(bounds, bounds[1:]):
        cumulative = log_decay[..., start:end].cumsum(-1)  # [B, H, L]: log decay from the chunk's start
        length = end - start
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        # exp(cs_i - cs_j) for j <= i: how much of token j's update token i still sees
        decay = (cumulative[..., :, None] - cumulative[..., None, :]).masked_fill(~causal, float("-inf")).exp()
        scores = torch.einsum("blhn,bshn->bhls", C[:, start:end], B[:, start:end]) * decay
        y[:, start:end] = torch.einsum("bhls,bshp->blhp", scores, xs[:, start:end])
        # what the state before the chunk contributes, decayed to each token
        y[:, start:end] += torch.einsum("blhn,bhpn->blhp", C[:, start:end], state) * cumulative.exp().transpose(1, 2)[..., None]
        to_end = (cumulative[..., -1:] - cumulative).exp()  # [B, H, L]
        state = state * cumulative[..., -1].exp()[..., None, None] + torch.einsum(
            "bshp,bshn,bhs->bhpn", xs[:, start:end], B[:, start:end], to_end
        )
        if end in wanted:
            checkpoints.append(state.clone())
    if D is not None:
        y += D.float()[:, None] * x.float()
    checkpoint_states = torch.stack(checkpoints) if checkpoints else state.new_zeros(0, *state.shape)
    return y.to(x.dtype), state, checkpoint_states


def recurrent_ssd_cpu(x, dt, A, B, C, D, dt_bias, dt_limit, state) -> torch.Tensor:
    """Decode step(s), T small: shapes as `chunk_ssd_cpu`; `state` `[B, H, P, N]` fp32 updated in place.

    Returns y `[B, T, H, P]` in x's dtype.
    """
    group_size = x.shape[2] // B.shape[2]
    step = discretized_dt(dt, dt_bias, dt_limit)
    decay = torch.exp(step * A.float())
    B, C = (t.float().repeat_interleave(group_size, dim=2) for t in (B, C))
    y = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for t in range(x.shape[1]):
        state.mul_(decay[:, t, :, None, None])
        state.add_((step[:, t, :, None] * x[:, t].float())[..., None] * B[:, t, :, None, :])
        y[:, t] = torch.einsum("bhpn,bhn->bhp", state, C[:, t])
    if D is not None:
        y += D.float()[:, None] * x.float()
    return y.to(x.dtype)
