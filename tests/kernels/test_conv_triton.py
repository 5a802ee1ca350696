"""Causal depthwise conv1d kernels (interpreted) against the reference: prefill with states, and decode."""

import pytest
import torch

from hf_hybrid_cache.kernels.conv_triton import causal_conv1d_triton, causal_conv1d_update_triton
from hf_hybrid_cache.kernels.reference import causal_conv1d_ref, causal_conv1d_update_ref

# D = 70 spans two 64-channel blocks; T = 130 five 32-token blocks; W = 3 masks the [D, 4] state tile.
PREFILL_CASES = [
    pytest.param(37, 4, True, True, "silu", (1, 2, 5, 37), id="T37-W4-state-bias-silu-ckpt1,2,5,37"),
    pytest.param(130, 4, False, False, "silu", (1, 3, 64, 65, 129), id="T130-W4-zero-state-ckpt1,3,64,65,129"),
    pytest.param(2, 4, True, True, None, (1,), id="T2-shorter-than-W-no-activation"),
    pytest.param(37, 3, True, False, "silu", (), id="T37-W3-state-no-ckpt"),
    # LFM2's short conv: W = 3, no bias, no activation; checkpoints at a block edge and at the last token.
    pytest.param(67, 3, True, False, None, (1, 32, 33, 67), id="T67-W3-lfm2-ckpt1,32,33,67"),
]


@pytest.mark.parametrize("seq_len, width, use_state, use_bias, activation, offsets", PREFILL_CASES)
def test_prefill_matches_reference(seq_len, width, use_state, use_bias, activation, offsets):
    batch_size, dim = 2, 70
    x, weight = torch.randn(batch_size, dim, seq_len), torch.randn(dim, width)
    bias = torch.randn(dim) if use_bias else None
    conv_state = torch.randn(batch_size, dim, width) if use_state else None
    kwargs = dict(conv_state=conv_state, activation=activation, checkpoint_offsets=offsets)
    expected = causal_conv1d_ref(x, weight, bias, **kwargs)
    actual = causal_conv1d_triton(x, weight, bias, **kwargs)
    for name, a, e in zip(("out", "new_state", "checkpoint_states"), actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype, name
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("seq_len", [1, 3], ids=["T1", "T3"])
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("width, activation", [(4, "silu"), (3, None)], ids=["W4-silu", "W3-lfm2"])
def test_update_matches_reference_in_place(seq_len, use_bias, width, activation):
    batch_size, dim = 2, 70
    x, weight = torch.randn(batch_size, dim, seq_len), torch.randn(dim, width)
    bias = torch.randn(dim) if use_bias else None
    conv_state = torch.randn(batch_size, dim, width)
    ref_state, address = conv_state.clone(), conv_state.data_ptr()
    expected = causal_conv1d_update_ref(x, ref_state, weight, bias, activation=activation)
    actual = causal_conv1d_update_triton(x, conv_state, weight, bias, activation=activation)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv_state, ref_state)
    assert conv_state.data_ptr() == address


def test_bf16_prefill_and_update_match_reference():
    """Half inputs: outputs rounded to bf16 once (the kernels accumulate in fp32); states are copies, exact."""
    x, weight, bias = torch.randn(2, 70, 130).bfloat16(), torch.randn(70, 4).bfloat16(), torch.randn(70).bfloat16()
    conv_state = torch.randn(2, 70, 4).bfloat16()
    kwargs = dict(conv_state=conv_state, checkpoint_offsets=(1, 64, 65, 129))
    for name, a, e in zip(("out", "new_state", "checkpoint_states"), causal_conv1d_triton(x, weight, bias, **kwargs),
                          causal_conv1d_ref(x, weight, bias, **kwargs)):
        assert a.dtype == e.dtype == torch.bfloat16, name
        torch.testing.assert_close(a, e, rtol=2e-2, atol=2e-2, msg=lambda m: f"{name}: {m}")
    ref_state = conv_state.clone()
    expected = causal_conv1d_update_ref(x[..., :1], ref_state, weight, bias)
    actual = causal_conv1d_update_triton(x[..., :1], conv_state, weight, bias)
    torch.testing.assert_close(actual, expected, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(conv_state, ref_state)
