"""Public entry points of the kernels package: check the arguments once, then run by the tensors' device.

CUDA tensors go to the Triton launchers (`*_triton.py`), imported on first use so that a CPU-only install
never imports triton; every other device runs the plain-PyTorch paths (`*_cpu.py`). The references in
`reference.py` are the test oracles and never run here.
"""

import functools
import importlib

import torch

from .checks import (
    check_causal_conv1d,
    check_gated_delta_rule,
    check_recurrent_state,
    check_selective_scan,
    check_ssd,
    check_varlen,
    normalize_offsets,
)
from .chunk_cpu import chunk_gated_delta_rule_cpu
from .conv_cpu import causal_conv1d_cpu, causal_conv1d_update_cpu
from .kda_cpu import chunk_kda_cpu
from .recurrent_cpu import recurrent_gated_delta_rule_cpu
from .scan_cpu import recurrent_selective_scan_cpu, selective_scan_cpu
from .ssd_cpu import chunk_ssd_cpu, recurrent_ssd_cpu
from .varlen import (
    NO_DT_LIMIT,
    causal_conv1d_varlen_impl,
    gated_delta_rule_varlen_impl,
    selective_scan_varlen_impl,
    ssd_varlen_impl,
)

# op name -> the module holding its `<op>_triton` launcher
_TRITON_MODULES = {
    "chunk_gated_delta_rule": "chunk_triton",
    "recurrent_gated_delta_rule": "recurrent_triton",
    "causal_conv1d": "conv_triton",
    "causal_conv1d_update": "conv_triton",
    "chunk_ssd": "ssd_triton",
    "recurrent_ssd": "ssd_triton",
    "selective_scan": "scan_triton",
    "recurrent_selective_scan": "scan_triton",
}
# Public ops composed of the ones above (`varlen.py`): they run those ops' launchers, none of their own.
COMPOSED_OPS = ("causal_conv1d_varlen", "gated_delta_rule_varlen", "ssd_varlen", "selective_scan_varlen")


def _triton_launcher(op: str):
    """The `<op>_triton` launcher, importing its module (and triton) on first use."""
    try:
        module = importlib.import_module(f".{_TRITON_MODULES[op]}", __package__)
    except ModuleNotFoundError as error:
        if error.name != "triton":
            raise
        message = f"{op} on CUDA tensors runs a Triton kernel: pip install 'hf-hybrid-cache[triton]'"
        raise ImportError(message) from error
    return getattr(module, f"{op}_triton")


def _without_autocast(op):
    """Run `op` with autocast off: the kernels pick their precisions themselves (fp32 states and
    accumulations), which autocast would otherwise recast to its lower dtype (a model generating inside a
    bf16 autocast region, as TRL's trainers do)."""

    @functools.wraps(op)
    def run(*args, **kwargs):
        if not (torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")):
            return op(*args, **kwargs)  # the usual case, without entering two contexts per decode step
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return op(*args, **kwargs)

    return run


@_without_autocast
def chunk_gated_delta_rule(
    q, k, v, g, beta, initial_state=None, checkpoint_offsets=(), use_qk_l2norm=True, scale=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gated delta rule over a whole sequence, with the states after each checkpoint offset, in one pass.

    Args:
        q, k: `[B, T, Hk, K]`; v: `[B, T, Hv, V]` with Hv a multiple of Hk (value head h reads key head
            h // (Hv // Hk)); beta: `[B, T, Hv]`; g (log decay, <= 0): `[B, T, Hv]`, one per head (Gated-DeltaNet),
            or `[B, T, Hv, K]`, one per key channel (KDA, Kimi-Linear's delta attention).
        initial_state: `[B, Hv, K, V]` or None (zeros).
        checkpoint_offsets: strictly increasing ints in [1, T], any positions (not only chunk multiples).
        use_qk_l2norm: L2-normalise q and k per head first. scale: defaults to K ** -0.5.

    Returns:
        o `[B, T, Hv, V]` in q's dtype, the final state `[B, Hv, K, V]` fp32, and the checkpoint states
        `[len(checkpoint_offsets), B, Hv, K, V]` fp32.
    """
    check_gated_delta_rule(q, k, v, g, beta, state=initial_state)
    checkpoint_offsets = normalize_offsets(checkpoint_offsets, seq_len=q.shape[1])
    if q.is_cuda:
        impl = _triton_launcher("chunk_gated_delta_rule")
    else:
        impl = chunk_kda_cpu if g.dim() == 4 else chunk_gated_delta_rule_cpu
    return impl(
        q, k, v, g, beta, initial_state=initial_state, checkpoint_offsets=checkpoint_offsets,
        use_qk_l2norm=use_qk_l2norm, scale=scale,
    )


@_without_autocast
def recurrent_gated_delta_rule(q, k, v, g, beta, state, use_qk_l2norm=True, scale=None) -> torch.Tensor:
    """Decode step(s), T small: shapes as `chunk_gated_delta_rule` (g per head or per key channel); `state`
    `[B, Hv, K, V]` fp32 updated in place (its address never changes). Returns o `[B, T, Hv, V]` in q's dtype."""
    check_gated_delta_rule(q, k, v, g, beta, state=state, state_name="state")
    check_recurrent_state(state)
    impl = _triton_launcher("recurrent_gated_delta_rule") if q.is_cuda else recurrent_gated_delta_rule_cpu
    return impl(q, k, v, g, beta, state=state, use_qk_l2norm=use_qk_l2norm, scale=scale)


@_without_autocast
def causal_conv1d(
    x, weight, bias=None, conv_state=None, activation="silu", checkpoint_offsets=()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Depthwise causal conv1d over `[conv_state | x]`, then SiLU (activation="silu") or nothing (None).

    Args:
        x: `[B, D, T]`; weight: `[D, W]`; bias: `[D]` or None; conv_state: `[B, D, W]` or None (zeros),
            the last W inputs before x, as transformers keeps it.
        checkpoint_offsets: strictly increasing ints in [1, T].

    Returns:
        out `[B, D, T]` in x's dtype, the new conv state `[B, D, W]`, and the conv states after each
        checkpoint offset `[N, B, D, W]`.
    """
    check_causal_conv1d(x, weight, bias, conv_state, activation)
    checkpoint_offsets = normalize_offsets(checkpoint_offsets, seq_len=x.shape[2])
    impl = _triton_launcher("causal_conv1d") if x.is_cuda else causal_conv1d_cpu
    return impl(
        x, weight, bias, conv_state=conv_state, activation=activation, checkpoint_offsets=checkpoint_offsets
    )


@_without_autocast
def causal_conv1d_update(x, conv_state, weight, bias=None, activation="silu") -> torch.Tensor:
    """Decode step(s): x `[B, D, T]` (T small); `conv_state` `[B, D, W]` updated in place. Returns `[B, D, T]`."""
    check_causal_conv1d(x, weight, bias, conv_state, activation)
    impl = _triton_launcher("causal_conv1d_update") if x.is_cuda else causal_conv1d_update_cpu
    return impl(x, conv_state, weight, bias, activation=activation)


@_without_autocast
def causal_conv1d_varlen(
    x, weight, bias, cu_seqlens, conv_states, state_indices, has_initial_state, activation="silu",
    checkpoint_offsets=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal conv1d over packed sequences, each starting from its slot of a state pool (continuous batching).

    Args:
        x: `[1, D, T]`, sequence i at columns `cu_seqlens[i]:cu_seqlens[i + 1]`; weight, bias as `causal_conv1d`.
        cu_seqlens: `[N + 1]` ints (list or tensor). conv_states: `[S, D, W]`, the pool, updated in place:
            slot `state_indices[i]` holds sequence i's state before the call (read only where
            `has_initial_state[i]`; zeros otherwise) and its final state after.
        checkpoint_offsets: None or one list per sequence of offsets inside it, as `causal_conv1d`'s.

    Returns:
        out `[1, D, T]` and the checkpoint states `[sum of the lists' lengths, D, W]`, sequence by sequence.
    """
    check_causal_conv1d(x[..., :1], weight, bias, None, activation)
    if x.shape[0] != 1 or conv_states.shape[1:] != (x.shape[1], weight.shape[1]):
        raise ValueError(f"x must be one packed row [1, D, T] and conv_states [S, D, W] = [S, {x.shape[1]}, "
                         f"{weight.shape[1]}], got {list(x.shape)} and {list(conv_states.shape)}")
    cu_seqlens, state_indices, has_initial_state, checkpoint_offsets = check_varlen(
        x.shape[2], cu_seqlens, conv_states, state_indices, has_initial_state, checkpoint_offsets
    )
    return causal_conv1d_varlen_impl(
        x, weight, bias, cu_seqlens, conv_states, state_indices, has_initial_state, activation, checkpoint_offsets,
        ops=(causal_conv1d, causal_conv1d_update),
    )


@_without_autocast
def gated_delta_rule_varlen(
    q, k, v, g, beta, cu_seqlens, states, state_indices, has_initial_state, checkpoint_offsets=None,
    use_qk_l2norm=True, scale=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated delta rule over packed sequences, each starting from its slot of a state pool (continuous batching):
    single-token sequences (decode steps) in one batched recurrent call, longer ones chunked one by one.

    Args:
        q, k: `[1, T, Hk, K]`; v: `[1, T, Hv, V]`; beta: `[1, T, Hv]`; g: `[1, T, Hv]` or `[1, T, Hv, K]` (as
            `chunk_gated_delta_rule`, packed).
        cu_seqlens, state_indices, has_initial_state, checkpoint_offsets: as `causal_conv1d_varlen`.
        states: `[S, Hv, K, V]` fp32, the pool, updated in place.

    Returns:
        o `[1, T, Hv, V]` in q's dtype and the checkpoint states `[sum of the lists' lengths, Hv, K, V]` fp32.
    """
    check_gated_delta_rule(q, k, v, g, beta)
    check_recurrent_state(states)
    if q.shape[0] != 1 or states.shape[1:] != (v.shape[2], q.shape[3], v.shape[3]):
        raise ValueError(f"q must be one packed row [1, T, Hk, K] and states [S, Hv, K, V] = [S, {v.shape[2]}, "
                         f"{q.shape[3]}, {v.shape[3]}], got {list(q.shape)} and {list(states.shape)}")
    cu_seqlens, state_indices, has_initial_state, checkpoint_offsets = check_varlen(
        q.shape[1], cu_seqlens, states, state_indices, has_initial_state, checkpoint_offsets
    )
    return gated_delta_rule_varlen_impl(
        q, k, v, g, beta, cu_seqlens, states, state_indices, has_initial_state, checkpoint_offsets, use_qk_l2norm,
        scale, ops=(chunk_gated_delta_rule, recurrent_gated_delta_rule),
    )


@_without_autocast
def chunk_ssd(
    x, dt, A, B, C, D=None, dt_bias=None, dt_limit=NO_DT_LIMIT, initial_state=None, checkpoint_offsets=()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mamba2's selective state space scan (SSD) over a whole sequence, with the states after each checkpoint
    offset, in one pass.

    Args:
        x: `[B, T, H, P]`; dt: `[B, T, H]`, the step size before `dt_bias` and softplus; A: `[H]` (negative,
            -exp(A_log)); B, C: `[B, T, G, N]` with H a multiple of G (head h reads group h // (H // G));
            D (the skip), dt_bias: `[H]` or None. dt_limit: (min, max) of the step size after softplus.
        initial_state: `[B, H, P, N]` or None (zeros), as transformers keeps it.
        checkpoint_offsets: strictly increasing ints in [1, T], any positions.

    Returns:
        y `[B, T, H, P]` in x's dtype (the skip included), the final state `[B, H, P, N]` fp32, and the
        checkpoint states `[len(checkpoint_offsets), B, H, P, N]` fp32.
    """
    check_ssd(x, dt, A, B, C, D, dt_bias, dt_limit, state=initial_state)
    checkpoint_offsets = normalize_offsets(checkpoint_offsets, seq_len=x.shape[1])
    impl = _triton_launcher("chunk_ssd") if x.is_cuda else chunk_ssd_cpu
    return impl(x, dt, A, B, C, D, dt_bias, dt_limit, initial_state=initial_state, checkpoint_offsets=checkpoint_offsets)


@_without_autocast
def recurrent_ssd(x, dt, A, B, C, D=None, dt_bias=None, dt_limit=NO_DT_LIMIT, *, state) -> torch.Tensor:
    """Decode step(s), T small: shapes as `chunk_ssd`; `state` `[B, H, P, N]` fp32 updated in place (its address
    never changes). Returns y `[B, T, H, P]` in x's dtype."""
    check_ssd(x, dt, A, B, C, D, dt_bias, dt_limit, state=state, state_name="state")
    check_recurrent_state(state)
    impl = _triton_launcher("recurrent_ssd") if x.is_cuda else recurrent_ssd_cpu
    return impl(x, dt, A, B, C, D, dt_bias, dt_limit, state)


@_without_autocast
def ssd_varlen(
    x, dt, A, B, C, D, dt_bias, dt_limit, cu_seqlens, states, state_indices, has_initial_state, checkpoint_offsets=None,
    unclamped=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba2's scan over packed sequences, each starting from its slot of a state pool (continuous batching):
    single-token sequences in one batched recurrent call, longer ones chunked one by one.

    Args:
        x: `[1, T, H, P]`; dt: `[1, T, H]`; B, C: `[1, T, G, N]` (as `chunk_ssd`, packed); A, D, dt_bias, dt_limit
            as `chunk_ssd`. cu_seqlens, state_indices, has_initial_state, checkpoint_offsets: as
            `causal_conv1d_varlen`. states: `[S, H, P, N]` fp32, the pool, updated in place.
        unclamped: None or per sequence whether its step size skips `dt_limit` (transformers' Mamba2 decode steps
            do, its prefills do not).

    Returns:
        y `[1, T, H, P]` in x's dtype and the checkpoint states `[sum of the lists' lengths, H, P, N]` fp32.
    """
    check_ssd(x, dt, A, B, C, D, dt_bias, dt_limit)
    check_recurrent_state(states)
    if x.shape[0] != 1 or states.shape[1:] != (x.shape[2], x.shape[3], B.shape[3]):
        raise ValueError(f"x must be one packed row [1, T, H, P] and states [S, H, P, N] = [S, {x.shape[2]}, "
                         f"{x.shape[3]}, {B.shape[3]}], got {list(x.shape)} and {list(states.shape)}")
    cu_seqlens, state_indices, has_initial_state, checkpoint_offsets = check_varlen(
        x.shape[1], cu_seqlens, states, state_indices, has_initial_state, checkpoint_offsets
    )
    unclamped = [False] * len(state_indices) if unclamped is None else [bool(u) for u in unclamped]
    if len(unclamped) != len(state_indices):
        raise ValueError(f"unclamped needs one entry per sequence ({len(state_indices)}), got {len(unclamped)}")
    return ssd_varlen_impl(
        x, dt, A, B, C, D, dt_bias, dt_limit, cu_seqlens, states, state_indices, has_initial_state, checkpoint_offsets,
        unclamped, ops=(chunk_ssd, recurrent_ssd),
    )


@_without_autocast
def selective_scan(
    x, dt, A, B, C, D=None, dt_bias=None, initial_state=None, checkpoint_offsets=()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mamba's (v1: Jamba's) selective scan over a whole sequence, with the states after each checkpoint offset, in
    one pass: a decay per channel and state element, exp(softplus(dt + dt_bias) A).

    Args:
        x, dt: `[B, T, D]` (dt before `dt_bias` and softplus); A: `[D, N]` (negative, -exp(A_log)); B, C: `[B, T, N]`,
            or `[B, T, G, N]` with D a multiple of G (channel d reads group d // (D // G)); D (the skip), dt_bias:
            `[D]` or None.
        initial_state: `[B, D, N]` or None (zeros), as transformers keeps it.
        checkpoint_offsets: strictly increasing ints in [1, T], any positions.

    Returns:
        y `[B, T, D]` in x's dtype (the skip included, not gated), the final state `[B, D, N]` fp32, and the
        checkpoint states `[len(checkpoint_offsets), B, D, N]` fp32.
    """
    check_selective_scan(x, dt, A, B, C, D, dt_bias, state=initial_state)
    checkpoint_offsets = normalize_offsets(checkpoint_offsets, seq_len=x.shape[1])
    impl = _triton_launcher("selective_scan") if x.is_cuda else selective_scan_cpu
    return impl(x, dt, A, B, C, D, dt_bias, initial_state=initial_state, checkpoint_offsets=checkpoint_offsets)


@_without_autocast
def recurrent_selective_scan(x, dt, A, B, C, D=None, dt_bias=None, *, state) -> torch.Tensor:
    """Decode step(s), T small: shapes as `selective_scan`; `state` `[B, D, N]` fp32 updated in place (its address
    never changes). Returns y `[B, T, D]` in x's dtype."""
    check_selective_scan(x, dt, A, B, C, D, dt_bias, state=state, state_name="state")
    check_recurrent_state(state)
    impl = _triton_launcher("recurrent_selective_scan") if x.is_cuda else recurrent_selective_scan_cpu
    return impl(x, dt, A, B, C, D, dt_bias, state)


@_without_autocast
def selective_scan_varlen(
    x, dt, A, B, C, D, dt_bias, cu_seqlens, states, state_indices, has_initial_state, checkpoint_offsets=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba's selective scan over packed sequences, each starting from its slot of a state pool (continuous
    batching): single-token sequences in one batched recurrent call, longer ones scanned one by one.

    Args:
        x, dt: `[1, T, D]`; B, C: `[1, T, N]` or `[1, T, G, N]` (as `selective_scan`, packed); A, D, dt_bias as `selective_scan`.
            cu_seqlens, state_indices, has_initial_state, checkpoint_offsets: as `causal_conv1d_varlen`.
            states: `[S, D, N]` fp32, the pool, updated in place.

    Returns:
        y `[1, T, D]` in x's dtype and the checkpoint states `[sum of the lists' lengths, D, N]` fp32.
    """
    check_selective_scan(x, dt, A, B, C, D, dt_bias)
    check_recurrent_state(states)
    if x.shape[0] != 1 or states.shape[1:] != A.shape:
        raise ValueError(f"x must be one packed row [1, T, D] and states [S, D, N] = [S, {A.shape[0]}, {A.shape[1]}], "
                         f"got {list(x.shape)} and {list(states.shape)}")
    cu_seqlens, state_indices, has_initial_state, checkpoint_offsets = check_varlen(
        x.shape[1], cu_seqlens, states, state_indices, has_initial_state, checkpoint_offsets
    )
    return selective_scan_varlen_impl(
        x, dt, A, B, C, D, dt_bias, cu_seqlens, states, state_indices, has_initial_state, checkpoint_offsets,
        ops=(selective_scan, recurrent_selective_scan),
    )


__all__ = [
    "causal_conv1d",
    "causal_conv1d_update",
    "causal_conv1d_varlen",
    "chunk_gated_delta_rule",
    "chunk_ssd",
    "gated_delta_rule_varlen",
    "recurrent_gated_delta_rule",
    "recurrent_selective_scan",
    "recurrent_ssd",
    "selective_scan",
    "selective_scan_varlen",
    "ssd_varlen",
]
