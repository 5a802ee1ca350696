"""Mamba2's SSD scan for CPU tensors in plain PyTorch, in the chunked form transformers' own scan uses: every
chunk's output and local state in batched einsums (inside a chunk, decay-masked attention), then the states
carried from chunk to chunk. The states after the checkpoint offsets are taken in the same pass, from the state
at their chunk's start and the chunk's tokens before them. Decode steps update the state in place.

Same contracts as `chunk_ssd_ref` / `recurrent_ssd_ref` in `reference.py`; the Triton kernels live in
`ssd_triton.py`.
"""

import torch
import torch.nn.functional as F

from .reference import discretized_dt

CHUNK_SIZE = 32  # tokens per chunk: the fastest of 16 / 32 / 64 / 128 at state sizes 16-128 on 2 CPU cores


def chunk_ssd_cpu(
    x, dt, A, B, C, D=None, dt_bias=None, dt_limit=(0.0, float("inf")), initial_state=None, checkpoint_offsets=()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x `[B, T, H, P]`; dt `[B, T, H]`; A, D, dt_bias `[H]`; B, C `[B, T, G, N]`; initial_state `[B, H, P, N]`.

    Returns y `[B, T, H, P]` in x's dtype, the final state and the checkpoint states (`[len(offsets), B, H, P,
    N]`), fp32.
    """
    batch_size, seq_len, num_heads, head_dim = x.shape
    group_size, size = num_heads // B.shape[2], CHUNK_SIZE
    num_chunks = -(-seq_len // size)
    pad = num_chunks * size - seq_len  # padded tokens take no step: they neither decay nor update the state
    step = F.pad(discretized_dt(dt, dt_bias, dt_limit), (0, 0, 0, pad))
    xs = F.pad(x.float(), (0, 0, 0, 0, 0, pad)) * step[..., None]  # d_t x_t, `[B, T', H, P]`
    B, C = (F.pad(t.float(), (0, 0, 0, 0, 0, pad)).repeat_interleave(group_size, dim=2) for t in (B, C))
    chunked = lambda t: t.reshape(batch_size, num_chunks, size, *t.shape[2:])  # noqa: E731
    xs, B, C = chunked(xs), chunked(B), chunked(C)  # `[B, c, L, H, ...]`
    cumulative = chunked(step * A.float()).cumsum(2)  # log decay from each chunk's start, `[B, c, L, H]`
    causal = torch.ones(size, size, dtype=torch.bool, device=x.device).tril()
    # exp(cs_i - cs_j) for j <= i: how much of token j's update token i still sees
    decay = (cumulative[:, :, :, None] - cumulative[:, :, None, :]).masked_fill(~causal[..., None], float("-inf")).exp()
    scores = torch.einsum("bclhn,bcshn->bclsh", C, B) * decay
    y = torch.einsum("bclsh,bcshp->bclhp", scores, xs)
    to_end = (cumulative[:, :, -1:] - cumulative).exp()  # `[B, c, L, H]`
    local = torch.einsum("bclhp,bclhn->bchpn", xs * to_end[..., None], B)  # each chunk's state from zero
    state = (
        x.new_zeros(batch_size, num_heads, head_dim, B.shape[-1], dtype=torch.float32)
        if initial_state is None
        else initial_state.float().clone()
    )
    starts = []  # the state at each chunk's start
    for c in range(num_chunks):
        starts.append(state)
        state = state * cumulative[:, c, -1].exp()[..., None, None] + local[:, c]
    starts = torch.stack(starts, dim=1)  # `[B, c, H, P, N]`
    y += torch.einsum("bclhn,bchpn->bclhp", C, starts) * cumulative.exp()[..., None]
    y = y.reshape(batch_size, num_chunks * size, num_heads, head_dim)[:, :seq_len]
    if D is not None:
        y += D.float()[:, None] * x.float()
    checkpoints = []
    for offset in checkpoint_offsets:
        c, inside = divmod(offset, size)
        if inside == 0:  # a chunk edge
            checkpoints.append(starts[:, c] if c < num_chunks else state)
            continue
        seen = cumulative[:, c, inside - 1]  # `[B, H]`
        weights = (seen[:, None] - cumulative[:, c, :inside]).exp()  # `[B, inside, H]`
        partial = torch.einsum("blhp,blhn->bhpn", xs[:, c, :inside] * weights[..., None], B[:, c, :inside])
        checkpoints.append(starts[:, c] * seen.exp()[..., None, None] + partial)
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
