"""Argument checks shared by every path of every op (reference, fast CPU, Triton), run once in `dispatch.py`.

Shapes and values raise ValueError, dtypes raise TypeError; each message says what to pass instead.
Checks that only the Triton launchers need (CUDA device, contiguity of in-place tensors) live in `launch.py`.
"""

import operator
from collections.abc import Sequence

import torch


def _shape(name: str, x: torch.Tensor, expected: tuple, names: str) -> None:
    """Fail unless `x.shape == expected`; `names` spells the dims, e.g. "[B, T, Hv]"."""
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {names} = {list(expected)}, got {list(x.shape)}")


def _ndim(name: str, x: torch.Tensor, ndim: int, names: str) -> None:
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {names}, got shape {list(x.shape)}")


def _floating(**tensors: torch.Tensor | None) -> None:
    for name, x in tensors.items():
        if x is not None and not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}; pass {name}.float()")


def _same_device(**tensors: torch.Tensor | None) -> None:
    devices = {name: x.device for name, x in tensors.items() if x is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listing}; move them with .to(device)")


def normalize_offsets(checkpoint_offsets: Sequence[int], seq_len: int) -> tuple[int, ...]:
    """Checkpoint offsets count consumed tokens: strictly increasing ints in [1, seq_len], returned as a tuple.

    Anything with `__index__` (numpy ints, 0-d integer tensors) is accepted and turned into a Python int.
    """
    try:
        offsets = tuple(operator.index(offset) for offset in checkpoint_offsets)
    except TypeError:
        raise TypeError(f"checkpoint_offsets must be ints, got {checkpoint_offsets!r}; pass tensor.tolist()") from None
    if any(b <= a for a, b in zip(offsets, offsets[1:])) or (offsets and not 1 <= offsets[0] <= offsets[-1] <= seq_len):
        raise ValueError(f"checkpoint_offsets must be strictly increasing ints in [1, {seq_len}], got {list(offsets)}")
    return offsets


def check_gated_delta_rule(q, k, v, g, beta, state=None, state_name="initial_state") -> None:
    """q, k `[B, T, Hk, K]`; v `[B, T, Hv, V]` with Hv % Hk == 0; beta `[B, T, Hv]`; g `[B, T, Hv]` (per head) or
    `[B, T, Hv, K]` (per key channel); state `[B, Hv, K, V]`."""
    _ndim("q", q, 4, "[B, T, Hk, K]")
    _ndim("v", v, 4, "[B, T, Hv, V]")
    batch_size, seq_len, num_k_heads, head_k_dim = q.shape
    num_v_heads, head_v_dim = v.shape[2:]
    _shape("k", k, q.shape, "[B, T, Hk, K] (as q)")
    _shape("v", v, (batch_size, seq_len, num_v_heads, head_v_dim), "[B, T, Hv, V] (B, T as q)")
    if seq_len < 1:
        raise ValueError("the sequence is empty (T = 0); skip the call instead")
    if num_v_heads % num_k_heads:
        raise ValueError(f"Hv = {num_v_heads} value heads must be a multiple of Hk = {num_k_heads} key heads")
    if g.dim() == 4:
        _shape("g", g, (batch_size, seq_len, num_v_heads, head_k_dim), "[B, T, Hv, K] (a decay per key channel)")
    else:
        _shape("g", g, (batch_size, seq_len, num_v_heads), "[B, T, Hv] (a decay per head) or [B, T, Hv, K]")
    _shape("beta", beta, (batch_size, seq_len, num_v_heads), "[B, T, Hv]")
    if state is not None:
        _shape(state_name, state, (batch_size, num_v_heads, head_k_dim, head_v_dim), "[B, Hv, K, V]")
    _floating(q=q, k=k, v=v, g=g, beta=beta, **{state_name: state})
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them alike")
    _same_device(q=q, k=k, v=v, g=g, beta=beta, **{state_name: state})


def check_recurrent_state(state: torch.Tensor) -> None:
    """The decode state is updated in place, so it must already be the fp32 tensor the cache keeps."""
    if state.dtype != torch.float32:
        raise TypeError(f"state must be float32 (it is updated in place), got {state.dtype}; keep it as fp32")


def check_causal_conv1d(x, weight, bias, conv_state, activation) -> None:
    """x `[B, D, T]`; weight `[D, W]`; bias `[D]`; conv_state `[B, D, W]`."""
    _ndim("x", x, 3, "[B, D, T]")
    _ndim("weight", weight, 2, "[D, W]")
    batch_size, dim, seq_len = x.shape
    width = weight.shape[1]
    if seq_len < 1:
        raise ValueError("the sequence is empty (T = 0); skip the call instead")
    _shape("weight", weight, (dim, width), "[D, W] (D as x's dim 1)")
    if bias is not None:
        _shape("bias", bias, (dim,), "[D]")
    if conv_state is not None:
        _shape("conv_state", conv_state, (batch_size, dim, width), "[B, D, W]")
    if activation not in ("silu", None):
        raise ValueError(f"activation must be 'silu' or None, got {activation!r}")
    _floating(x=x, weight=weight, bias=bias, conv_state=conv_state)
    _same_device(x=x, weight=weight, bias=bias, conv_state=conv_state)


def check_varlen(total_len: int, cu_seqlens, states: torch.Tensor, state_indices, has_initial_state,
                 checkpoint_offsets) -> tuple[list[int], list[int], list[bool], list[tuple[int, ...]]]:
    """Packed sequences over a slot pool: `cu_seqlens` `[N + 1]` from 0 to the packed length, strictly
    increasing; `state_indices` `[N]` distinct slots of `states` `[S, ...]`; `has_initial_state` `[N]`;
    `checkpoint_offsets` None or N lists of offsets inside each sequence. Returned as Python lists."""
    as_list = lambda x: x.tolist() if isinstance(x, torch.Tensor) else list(x)  # noqa: E731
    cu_seqlens, state_indices, has_initial_state = as_list(cu_seqlens), as_list(state_indices), as_list(has_initial_state)
    num_seqs = len(cu_seqlens) - 1
    if num_seqs < 1 or cu_seqlens[0] != 0 or cu_seqlens[-1] != total_len or any(
        b <= a for a, b in zip(cu_seqlens, cu_seqlens[1:])
    ):
        raise ValueError(f"cu_seqlens must rise strictly from 0 to the packed length {total_len}, got {cu_seqlens}")
    if len(state_indices) != num_seqs or len(has_initial_state) != num_seqs:
        raise ValueError(f"state_indices and has_initial_state need one entry per sequence ({num_seqs}), "
                         f"got {len(state_indices)} and {len(has_initial_state)}")
    if len(set(state_indices)) != num_seqs or not all(0 <= s < states.shape[0] for s in state_indices):
        raise ValueError(f"state_indices must be distinct slots in [0, {states.shape[0]}), got {state_indices}")
    if checkpoint_offsets is None:
        checkpoint_offsets = [()] * num_seqs
    if len(checkpoint_offsets) != num_seqs:
        raise ValueError(f"checkpoint_offsets needs one list per sequence ({num_seqs}), got {len(checkpoint_offsets)}")
    checkpoint_offsets = [
        normalize_offsets(offsets, seq_len=end - begin)
        for offsets, begin, end in zip(checkpoint_offsets, cu_seqlens, cu_seqlens[1:])
    ]
    return cu_seqlens, state_indices, [bool(x) for x in has_initial_state], checkpoint_offsets


def check_ssd(x, dt, A, B, C, D, dt_bias, dt_limit, state=None, state_name="initial_state") -> None:
    """x `[B, T, H, P]`; dt `[B, T, H]`; A, D, dt_bias `[H]`; B, C `[B, T, G, N]` with H % G == 0; dt_limit
    (min, max); state `[B, H, P, N]`."""
    _ndim("x", x, 4, "[B, T, H, P]")
    _ndim("B", B, 4, "[B, T, G, N]")
    batch_size, seq_len, num_heads, head_dim = x.shape
    num_groups, state_size = B.shape[2:]
    if seq_len < 1:
        raise ValueError("the sequence is empty (T = 0); skip the call instead")
    _shape("B", B, (batch_size, seq_len, num_groups, state_size), "[B, T, G, N] (B, T as x)")
    _shape("C", C, B.shape, "[B, T, G, N] (as B)")
    if num_heads % num_groups:
        raise ValueError(f"H = {num_heads} heads must be a multiple of G = {num_groups} groups")
    _shape("dt", dt, (batch_size, seq_len, num_heads), "[B, T, H]")
    for name, param in (("A", A), ("D", D), ("dt_bias", dt_bias)):
        if param is not None:
            _shape(name, param, (num_heads,), "[H]")
    if len(dt_limit) != 2 or not dt_limit[0] <= dt_limit[1]:
        raise ValueError(f"dt_limit must be (min, max) with min <= max, got {dt_limit!r}")
    if state is not None:
        _shape(state_name, state, (batch_size, num_heads, head_dim, state_size), "[B, H, P, N]")
    _floating(x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias, **{state_name: state})
    if B.dtype != C.dtype:
        raise TypeError(f"B and C must share one dtype, got {B.dtype} and {C.dtype}; cast them alike")
    _same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias, **{state_name: state})


def check_selective_scan(x, dt, A, B, C, D, dt_bias, state=None, state_name="initial_state") -> None:
    """x, dt `[B, T, D]`; A `[D, N]`; B, C `[B, T, N]` or `[B, T, G, N]` with D % G == 0; D, dt_bias `[D]`;
    state `[B, D, N]`."""
    _ndim("x", x, 3, "[B, T, D]")
    _ndim("A", A, 2, "[D, N] (a decay rate per channel and state element)")
    batch_size, seq_len, dim = x.shape
    state_size = A.shape[1]
    if seq_len < 1:
        raise ValueError("the sequence is empty (T = 0); skip the call instead")
    _shape("dt", dt, x.shape, "[B, T, D] (as x)")
    _shape("A", A, (dim, state_size), "[D, N] (D as x's last dim)")
    if B.dim() == 4:
        _shape("B", B, (batch_size, seq_len, B.shape[2], state_size), "[B, T, G, N] (N as A's last dim)")
        if dim % B.shape[2]:
            raise ValueError(f"D = {dim} channels must be a multiple of G = {B.shape[2]} groups of B and C")
    else:
        _shape("B", B, (batch_size, seq_len, state_size), "[B, T, N] (N as A's last dim) or [B, T, G, N]")
    _shape("C", C, B.shape, "as B")
    for name, param in (("D", D), ("dt_bias", dt_bias)):
        if param is not None:
            _shape(name, param, (dim,), "[D]")
    if state is not None:
        _shape(state_name, state, (batch_size, dim, state_size), "[B, D, N]")
    _floating(x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias, **{state_name: state})
    _same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias, **{state_name: state})
