"""Mamba's (v1: Jamba's) selective scan for CPU tensors, in plain PyTorch, with the states at any checkpoint
offsets in the same pass.

Same contract as `selective_scan_ref` in `reference.py`. The decay exp(s[d] A[d, n]) differs per channel and state
element, so no chunk of the scan is a matmul (the SSD chunk form needs one decay per head): the scan walks the
tokens, as transformers' own PyTorch path does, with the per-token operands of a block of tokens computed at once
and its outputs read off the stored states in one contraction. Memory: a few `[B, TIME_BLOCK, D, N]` fp32 tensors.
"""

import torch
import torch.nn.functional as F

from .reference import per_channel

# Tokens whose decays, inputs and states are held at once.
TIME_BLOCK = 128


def selective_scan_cpu(
    x, dt, A, B, C, D=None, dt_bias=None, initial_state=None, checkpoint_offsets=()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, dt `[B, T, D]`; A `[D, N]`; B, C `[B, T, N]` or `[B, T, G, N]`; D, dt_bias `[D]` or None; initial_state
    `[B, D, N]` or None.

    Returns y `[B, T, D]` in x's dtype, the final state `[B, D, N]` fp32 and the checkpoint states `[n, B, D, N]`.
    """
    batch_size, seq_len, dim = x.shape
    state = x.new_zeros(batch_size, dim, A.shape[1], dtype=torch.float32)
    if initial_state is not None:
        state.copy_(initial_state)
    step = F.softplus(dt.float() + (0.0 if dt_bias is None else dt_bias.float()))
    y = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    checkpoint_at = {offset - 1: i for i, offset in enumerate(checkpoint_offsets)}
    checkpoints = state.new_empty(len(checkpoint_offsets), *state.shape)
    for begin in range(0, seq_len, TIME_BLOCK):
        end = min(begin + TIME_BLOCK, seq_len)
        decay = torch.exp(step[:, begin:end, :, None] * A.float())  # [B, L, D, N]
        # states[:, t] starts as token t's input s x B and becomes the state after it, in place.
        states = (step[:, begin:end] * x[:, begin:end].float())[..., None] * per_channel(B[:, begin:end], dim)
        for t in range(end - begin):
            state = states[:, t].addcmul_(decay[:, t], state)
            if begin + t in checkpoint_at:
                checkpoints[checkpoint_at[begin + t]] = state
        y[:, begin:end] = torch.einsum("bldn,bldn->bld", states, per_channel(C[:, begin:end], dim))
    if D is not None:
        y += D.float() * x.float()
    # A copy: the last block's states are not kept alive by the returned state.
    return y.to(x.dtype), state.clone(), checkpoints


def recurrent_selective_scan_cpu(x, dt, A, B, C, D, dt_bias, state) -> torch.Tensor:
    """Decode step(s), T small: shapes as `selective_scan_cpu`; `state` `[B, D, N]` fp32 updated in place."""
    y, final_state, _ = selective_scan_cpu(x, dt, A, B, C, D, dt_bias, initial_state=state)
    state.copy_(final_state)
    return y
