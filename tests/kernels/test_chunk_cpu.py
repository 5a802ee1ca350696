"""Fast CPU chunked gated delta rule against the token-by-token reference and against transformers'."""

import pytest
import torch
import torch.nn.functional as F
from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule

from hf_hybrid_cache.kernels.chunk_cpu import CHUNK_SIZE, chunk_gated_delta_rule_cpu
from hf_hybrid_cache.kernels.reference import chunk_gated_delta_rule_ref

# Offsets at a chunk's first token, inside it, at its edges (CHUNK_SIZE = 64) and at T, where T allows.
ODD_OFFSETS = (1, 5, 63, 64, 65)
assert CHUNK_SIZE == 64, "ODD_OFFSETS straddle a 64-token chunk edge; update them with the chunk size"


def gdn_inputs(batch_size, seq_len, num_k_heads, num_v_heads, head_k_dim=16, head_v_dim=24, max_decay=0.5):
    """q, k `[B, T, Hk, K]`, v `[B, T, Hv, V]`, g (log decay in [-max_decay, 0]) and beta `[B, T, Hv]`."""
    q = torch.randn(batch_size, seq_len, num_k_heads, head_k_dim)
    k = torch.randn(batch_size, seq_len, num_k_heads, head_k_dim)
    v = torch.randn(batch_size, seq_len, num_v_heads, head_v_dim)
    g = -max_decay * torch.rand(batch_size, seq_len, num_v_heads)
    beta = torch.rand(batch_size, seq_len, num_v_heads)
    return q, k, v, g, beta


def assert_relative_close(actual, expected, tol, name=""):
    """max |actual - expected| <= tol * max |expected|, with equal shapes and dtypes."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, name
    if expected.numel():
        error = (actual.float() - expected.float()).abs().max().item()
        assert error <= tol * expected.float().abs().max().item(), f"{name}: error {error:.3g}"


def check_against_reference(inputs, tol=1e-4, **kwargs):
    expected = chunk_gated_delta_rule_ref(*inputs, **kwargs)
    actual = chunk_gated_delta_rule_cpu(*inputs, **kwargs)
    for name, a, e in zip(("o", "final_state", "checkpoint_states"), actual, expected):
        assert_relative_close(a, e, tol, name)


# (B, T, Hk, Hv), use an initial state.
SHAPES = [
    pytest.param((1, 1, 1, 1), False, id="T1"),
    pytest.param((2, 5, 2, 4), True, id="T5-B2-gqa2-init"),
    pytest.param((1, 37, 1, 1), True, id="T37-init"),
    pytest.param((2, 130, 2, 2), False, id="T130-B2"),
    pytest.param((1, 130, 1, 2), True, id="T130-gqa2-init"),
    pytest.param((2, 200, 1, 2), True, id="T200-B2-gqa2-init"),
]


@pytest.mark.parametrize("dims, use_initial_state", SHAPES)
def test_matches_reference_with_odd_checkpoints(dims, use_initial_state):
    batch_size, seq_len, _, num_v_heads = dims
    inputs = gdn_inputs(*dims)
    h0 = torch.randn(batch_size, num_v_heads, 16, 24) if use_initial_state else None
    offsets = tuple(o for o in ODD_OFFSETS if o < seq_len) + (seq_len,)
    check_against_reference(inputs, initial_state=h0, checkpoint_offsets=offsets)


@pytest.mark.parametrize("offsets", [(), (64, 128), (128,)], ids=["no-ckpt", "ckpt64,128", "ckpt128-only"])
def test_whole_chunks(offsets):
    check_against_reference(gdn_inputs(1, 128, 2, 4), checkpoint_offsets=offsets)


def test_strong_decay_flushed_to_zero_stays_exact():
    """g down to -20 per token, as in real models: decays below exp(-30) are flushed to zero."""
    inputs = gdn_inputs(1, 150, 1, 2, max_decay=20.0)
    check_against_reference(inputs, initial_state=torch.randn(1, 2, 16, 24), checkpoint_offsets=(3, 64, 100))


def test_without_l2norm_and_with_scale():
    """Unnormalised keys with beta <= 1 can grow the state; small k keeps the reference stable."""
    q, k, v, g, beta = gdn_inputs(1, 70, 1, 2)
    check_against_reference((q, k * 0.2, v, g, beta), use_qk_l2norm=False, scale=0.3, checkpoint_offsets=(33,))


def test_bf16_inputs_compute_in_fp32():
    inputs = tuple(x.bfloat16() for x in gdn_inputs(2, 37, 1, 2))
    o, final_state, checkpoint_states = chunk_gated_delta_rule_cpu(*inputs, checkpoint_offsets=(7,))
    ref_o, ref_state, ref_checkpoints = chunk_gated_delta_rule_ref(*inputs, checkpoint_offsets=(7,))
    assert o.dtype == torch.bfloat16 and final_state.dtype == checkpoint_states.dtype == torch.float32
    assert_relative_close(o, ref_o, 1e-2, "o")  # one bf16 rounding of the output
    assert_relative_close(final_state, ref_state, 1e-4, "final_state")
    assert_relative_close(checkpoint_states, ref_checkpoints, 1e-4, "checkpoint_states")


def test_strided_inputs_as_the_model_passes_them():
    """Qwen3-Next hands over q, k, v as transposed views of its conv output (stride 1 along T)."""
    q, k, v, g, beta = gdn_inputs(1, 90, 2, 4)
    q, k, v = (x.transpose(1, 3).contiguous().transpose(1, 3) for x in (q, k, v))
    check_against_reference((q, k, v, g, beta), checkpoint_offsets=(40,))


def test_matches_transformers_chunked_reference():
    """Same inputs as transformers' own chunked implementation, with a model-like decay."""
    q, k, v, _, beta = gdn_inputs(2, 300, 2, 4, head_k_dim=32, head_v_dim=32)
    g = -F.softplus(torch.randn(2, 300, 4)) * 4
    h0 = torch.randn(2, 4, 32, 32)
    expected_o, expected_state = torch_chunk_gated_delta_rule(
        q, k, v, g, beta, initial_state=h0.clone(), output_final_state=True, use_qk_l2norm_in_kernel=True
    )
    o, final_state, _ = chunk_gated_delta_rule_cpu(q, k, v, g, beta, initial_state=h0)
    assert_relative_close(o, expected_o, 1e-4, "o")
    assert_relative_close(final_state, expected_state, 1e-4, "final_state")
