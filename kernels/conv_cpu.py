"""Depthwise causal conv1d for CPU tensors in plain PyTorch: one `F.conv1d` over `[conv_state | x]`.

Same contract as `causal_conv1d_ref` / `causal_conv1d_update_ref` in `reference.py`; checkpoint states are
one strided view indexed once instead of a Python loop. The Triton kernels live in `conv_triton.py`.
"""

import torch
import torch.nn.functional as F


def causal_conv1d_cpu(x, weight, bias=None, conv_state=None, activation="silu", checkpoint_offsets=()):
    """x `[B, D, T]`, weight `[D, W]` -> out `[B, D, T]`, new state `[B, D, W]`, checkpoint states `[N, B, D, W]`."""
    batch_size, dim, seq_len = x.shape
    width = weight.shape[1]
    state = x.new_zeros(batch_size, dim, width) if conv_state is None else conv_state.to(x.dtype)
    full = torch.cat([state, x], dim=-1)
    # The state's first column never reaches an output (transformers keeps W inputs, the conv reads W - 1).
    out = F.conv1d(full[..., 1:].to(weight.dtype), weight.unsqueeze(1), bias, groups=dim)
    if activation == "silu":
        out = F.silu(out)
    # windows[:, :, m] = full[..., m : m + W] is the state after m tokens of x.
    windows = full.unfold(-1, width, 1)
    offsets = torch.tensor(list(checkpoint_offsets), dtype=torch.long, device=x.device)
    checkpoint_states = windows[:, :, offsets].permute(2, 0, 1, 3).contiguous()
    return out.to(x.dtype), full[..., -width:].clone(), checkpoint_states


def causal_conv1d_update_cpu(x, conv_state, weight, bias=None, activation="silu") -> torch.Tensor:
    """Decode step(s): x `[B, D, T]`; conv_state `[B, D, W]` updated in place. Returns `[B, D, T]`."""
    out, new_state, _ = causal_conv1d_cpu(x, weight, bias, conv_state=conv_state, activation=activation)
    conv_state.copy_(new_state)
    return out
