"""Gated delta rule decode kernel (interpreted) against the reference: outputs and the in-place state."""

import pytest
import torch

from hf_hybrid_cache.kernels.recurrent_triton import recurrent_gated_delta_rule_triton
from hf_hybrid_cache.kernels.reference import recurrent_gated_delta_rule_ref


# (B, T, Hk, Hv, K, V): V = 48 spans two 32-column blocks, the second half masked; K = 24 is masked too.
@pytest.mark.parametrize(
    "dims",
    [
        pytest.param((1, 1, 1, 1, 16, 16), id="T1-gqa1-K16-V16"),
        pytest.param((2, 3, 2, 4, 24, 48), id="T3-gqa2-B2-K24-V48"),
    ],
)
@pytest.mark.parametrize("use_qk_l2norm", [True, False], ids=["l2norm", "no-l2norm"])
def test_matches_reference_and_updates_state_in_place(dims, use_qk_l2norm):
    batch_size, seq_len, num_k_heads, num_v_heads, head_k_dim, head_v_dim = dims
    q = torch.randn(batch_size, seq_len, num_k_heads, head_k_dim)
    k = torch.randn(batch_size, seq_len, num_k_heads, head_k_dim) * (1.0 if use_qk_l2norm else 0.2)
    v = torch.randn(batch_size, seq_len, num_v_heads, head_v_dim)
    g = -0.5 * torch.rand(batch_size, seq_len, num_v_heads)
    beta = torch.rand(batch_size, seq_len, num_v_heads)
    state = torch.randn(batch_size, num_v_heads, head_k_dim, head_v_dim)
    ref_state, address = state.clone(), state.data_ptr()

    expected = recurrent_gated_delta_rule_ref(q, k, v, g, beta, ref_state, use_qk_l2norm=use_qk_l2norm, scale=0.7)
    actual = recurrent_gated_delta_rule_triton(q, k, v, g, beta, state, use_qk_l2norm=use_qk_l2norm, scale=0.7)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state, ref_state, rtol=1e-4, atol=1e-5)
    assert state.data_ptr() == address


def test_bf16_inputs_match_reference_with_an_fp32_state():
    q, k, v = (torch.randn(2, 3, *shape).bfloat16() for shape in ((2, 24), (2, 24), (4, 48)))
    g, beta = -0.5 * torch.rand(2, 3, 4), torch.rand(2, 3, 4).bfloat16()
    state = torch.randn(2, 4, 24, 48)
    ref_state = state.clone()
    expected = recurrent_gated_delta_rule_ref(q, k, v, g, beta, ref_state)
    actual = recurrent_gated_delta_rule_triton(q, k, v, g, beta, state)
    assert actual.dtype == torch.bfloat16 and state.dtype == torch.float32
    torch.testing.assert_close(actual, expected, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(state, ref_state, rtol=1e-3, atol=1e-4)
