"""Every rejected argument gets an error that names the fix: shared checks (through the public functions)
and the launcher-only checks (device, contiguity of tensors written in place)."""

import pytest
import torch

from hf_hybrid_cache import kernels
from hf_hybrid_cache.kernels.chunk_triton import chunk_gated_delta_rule_triton
from hf_hybrid_cache.kernels.conv_triton import causal_conv1d_triton, causal_conv1d_update_triton
from hf_hybrid_cache.kernels.recurrent_triton import recurrent_gated_delta_rule_triton

B, T, HK, HV, K, V = 1, 5, 2, 4, 8, 8


def gdn(**overrides):
    """Valid chunk_gated_delta_rule arguments, some replaced."""
    args = dict(
        q=torch.randn(B, T, HK, K), k=torch.randn(B, T, HK, K), v=torch.randn(B, T, HV, V),
        g=-torch.rand(B, T, HV), beta=torch.rand(B, T, HV), initial_state=None, checkpoint_offsets=(),
    )
    return {**args, **overrides}


def decode(**overrides):
    """Valid recurrent_gated_delta_rule arguments, some replaced."""
    args = {name: x for name, x in gdn().items() if name not in ("initial_state", "checkpoint_offsets")}
    return {**args, "state": torch.zeros(B, HV, K, V), **overrides}


def meta(*shape):
    return torch.zeros(*shape, device="meta")


GDN_ERRORS = [
    pytest.param(dict(q=torch.randn(B, T, K)), ValueError, r"q must be 4-D \[B, T, Hk, K\]", id="q-3d"),
    pytest.param(dict(k=torch.randn(B, T, HK, K + 1)), ValueError, r"k must have shape", id="k-shape"),
    pytest.param(dict(v=torch.randn(B, T + 1, HV, V)), ValueError, r"v must have shape .*B, T as q", id="v-length"),
    pytest.param(dict(v=torch.randn(B, T, 3, V), g=-torch.rand(B, T, 3), beta=torch.rand(B, T, 3)),
                 ValueError, r"multiple of Hk", id="heads-not-multiple"),
    pytest.param(dict(g=torch.rand(B, T, HK)), ValueError, r"g must have shape \[B, T, Hv\]", id="g-shape"),
    pytest.param(dict(beta=torch.rand(B, T)), ValueError, r"beta must have shape", id="beta-shape"),
    pytest.param(dict(initial_state=torch.zeros(B, HV, V, K + 1)), ValueError,
                 r"initial_state must have shape \[B, Hv, K, V\]", id="state-shape"),
    pytest.param(dict(q=torch.ones(B, T, HK, K, dtype=torch.long)), TypeError, r"q must be a floating.*q\.float\(\)",
                 id="q-int"),
    pytest.param(dict(v=torch.randn(B, T, HV, V, dtype=torch.float64)), TypeError, r"share one dtype", id="v-dtype"),
    pytest.param(dict(k=torch.randn(B, T, HK, K, device="meta")), ValueError, r"one device.*\.to\(device\)",
                 id="device-mix"),
    pytest.param(dict(checkpoint_offsets=(3, 3)), ValueError, r"strictly increasing ints in \[1, 5\]",
                 id="ckpt-repeat"),
    pytest.param(dict(checkpoint_offsets=(0, 2)), ValueError, r"strictly increasing", id="ckpt-zero"),
    pytest.param(dict(checkpoint_offsets=(T + 1,)), ValueError, r"in \[1, 5\]", id="ckpt-past-T"),
    pytest.param(dict(checkpoint_offsets=(2.0,)), TypeError, r"must be ints.*tolist", id="ckpt-float"),
]


@pytest.mark.parametrize("overrides, error, message", GDN_ERRORS)
def test_gated_delta_rule_errors(overrides, error, message):
    with pytest.raises(error, match=message):
        kernels.chunk_gated_delta_rule(**gdn(**overrides))


def test_empty_sequence_is_rejected():
    args = gdn()
    empty = {name: args[name][:, :0] for name in ("q", "k", "v", "g", "beta")}
    with pytest.raises(ValueError, match="T = 0"):
        kernels.chunk_gated_delta_rule(**{**args, **empty})


def test_offsets_accept_any_integer_type():
    *_, checkpoints = kernels.chunk_gated_delta_rule(**gdn(checkpoint_offsets=torch.tensor([2, 5])))
    assert checkpoints.shape[0] == 2


def test_recurrent_state_must_be_fp32():
    with pytest.raises(TypeError, match="state must be float32"):
        kernels.recurrent_gated_delta_rule(**decode(state=torch.zeros(B, HV, K, V, dtype=torch.bfloat16)))


CONV_ERRORS = [
    pytest.param(dict(x=torch.randn(3, 5)), ValueError, r"x must be 3-D \[B, D, T\]", id="x-2d"),
    pytest.param(dict(weight=torch.randn(7, 4)), ValueError, r"weight must have shape \[D, W\]", id="weight-D"),
    pytest.param(dict(bias=torch.randn(7)), ValueError, r"bias must have shape \[D\]", id="bias-D"),
    pytest.param(dict(conv_state=torch.randn(2, 6, 3)), ValueError, r"conv_state must have shape \[B, D, W\]",
                 id="state-width"),
    pytest.param(dict(activation="gelu"), ValueError, r"'silu' or None", id="activation"),
    pytest.param(dict(weight=torch.ones(6, 4, dtype=torch.int32)), TypeError, r"weight must be a floating",
                 id="weight-int"),
    pytest.param(dict(checkpoint_offsets=(6,)), ValueError, r"in \[1, 5\]", id="ckpt-past-T"),
]


@pytest.mark.parametrize("overrides, error, message", CONV_ERRORS)
def test_causal_conv1d_errors(overrides, error, message):
    args = dict(x=torch.randn(2, 6, 5), weight=torch.randn(6, 4), bias=None, conv_state=None, activation="silu")
    with pytest.raises(error, match=message):
        kernels.causal_conv1d(**{**args, **overrides})


LAUNCHERS_ON_META = {
    "chunk": lambda: chunk_gated_delta_rule_triton(**gdn(q=meta(B, T, HK, K))),
    "recurrent": lambda: recurrent_gated_delta_rule_triton(**decode(state=meta(B, HV, K, V))),
    "conv": lambda: causal_conv1d_triton(meta(1, 6, 5), torch.randn(6, 4)),
    "conv_update": lambda: causal_conv1d_update_triton(torch.randn(1, 6, 1), meta(1, 6, 4), torch.randn(6, 4)),
}


@pytest.mark.parametrize("launch", LAUNCHERS_ON_META.values(), ids=LAUNCHERS_ON_META.keys())
def test_launchers_refuse_devices_the_interpreter_cannot_run(launch):
    with pytest.raises(ValueError, match=r"is on meta; .*interpreted.*pass CPU tensors"):
        launch()


def test_launchers_refuse_non_contiguous_in_place_tensors():
    transposed_state = torch.zeros(B, HV, V, K).transpose(2, 3)
    with pytest.raises(ValueError, match=r"state must be contiguous.*allocate it contiguous"):
        recurrent_gated_delta_rule_triton(**decode(state=transposed_state))
    with pytest.raises(ValueError, match=r"conv_state must be contiguous"):
        causal_conv1d_update_triton(torch.randn(1, 6, 1), torch.zeros(1, 4, 6).transpose(1, 2), torch.randn(6, 4))
