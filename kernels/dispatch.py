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
    normalize_offsets,
)
from .chunk_cpu import chunk_gated_delta_rule_cpu
from .conv_cpu import causal_conv1d_cpu, causal_conv1d_update_cpu
from .recurrent_cpu import recurrent_gated_delta_rule_cpu

# op name -> the module holding its `<op>_triton` launcher
_TRITON_MODULES = {
    "chunk_gated_delta_rule": "chunk_triton",
    "recurrent_gated_delta_rule": "recurrent_triton",
    "causal_conv1d": "conv_triton",
    "causal_conv1d_update": "conv_triton",
}


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
            h // (Hv // Hk)); g (log decay, <= 0), beta: `[B, T, Hv]`.
        initial_state: `[B, Hv, K, V]` or None (zeros).
        checkpoint_offsets: strictly increasing ints in [1, T], any positions (not only chunk multiples).
        use_qk_l2norm: L2-normalise q and k per head first. scale: defaults to K ** -0.5.

    Returns:
        o `[B, T, Hv, V]` in q's dtype, the final state `[B, Hv, K, V]` fp32, and the checkpoint states
        `[len(checkpoint_offsets), B, Hv, K, V]` fp32.
    """
    check_gated_delta_rule(q, k, v, g, beta, state=initial_state)
    checkpoint_offsets = normalize_offsets(checkpoint_offsets, seq_len=q.shape[1])
    impl = _triton_launcher("chunk_gated_delta_rule") if q.is_cuda else chunk_gated_delta_rule_cpu
    return impl(
        q, k, v, g, beta, initial_state=initial_state, checkpoint_offsets=checkpoint_offsets,
        use_qk_l2norm=use_qk_l2norm, scale=scale,
    )


@_without_autocast
def recurrent_gated_delta_rule(q, k, v, g, beta, state, use_qk_l2norm=True, scale=None) -> torch.Tensor:
    """Decode step(s), T small: shapes as `chunk_gated_delta_rule`; `state` `[B, Hv, K, V]` fp32 updated in
    place (its address never changes). Returns o `[B, T, Hv, V]` in q's dtype."""
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


__all__ = [
    "causal_conv1d",
    "causal_conv1d_update",
    "chunk_gated_delta_rule",
    "recurrent_gated_delta_rule",
]
