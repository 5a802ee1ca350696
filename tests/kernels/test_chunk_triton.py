"""Chunked gated delta rule: the Triton kernels (interpreted) against the token-by-token reference."""

import pytest
import torch

from hf_hybrid_cache.kernels.chunk_triton import CHUNK_SIZE, chunk_gated_delta_rule_triton
from hf_hybrid_cache.kernels.reference import chunk_gated_delta_rule_ref


def gdn_inputs(batch_size, seq_len, num_k_heads, num_v_heads, head_k_dim, head_v_dim, dtype=torch.float32):
    """q, k `[B, T, Hk, K]`, v `[B, T, Hv, V]`, g (log decay in [-0.5, 0]) and beta `[B, T, Hv]`."""
    q = torch.randn(batch_size, seq_len, num_k_heads, head_k_dim, dtype=dtype)
    k = torch.randn(batch_size, seq_len, num_k_heads, head_k_dim, dtype=dtype)
    v = torch.randn(batch_size, seq_len, num_v_heads, head_v_dim, dtype=dtype)
    g = -0.5 * torch.rand(batch_size, seq_len, num_v_heads)
    beta = torch.rand(batch_size, seq_len, num_v_heads)
    return q, k, v, g, beta


# (B, T, Hk, Hv, K, V), use an initial state, checkpoint offsets. K = 24 and V = 80 exercise the head-dim
# masks (V = 80 also spans two V blocks); offsets hit a chunk's first token, the middle, the edge and T.
CASES = [
    pytest.param((1, 37, 1, 1, 16, 16), True, (1, 5, 37), id="T37-gqa1-K16-V16-init-ckpt1,5,37"),
    pytest.param((2, 70, 2, 4, 32, 16), False, (1, 5, 64, 65, 70), id="T70-gqa2-B2-K32-V16-ckpt1,5,64,65,70"),
    pytest.param((1, 130, 1, 2, 24, 80), True, (1, 63, 64, 65, 128, 129), id="T130-gqa2-K24-V80-init-ckpt1..129"),
    pytest.param((1, 64, 2, 2, 16, 32), False, (64,), id="T64-one-full-chunk-ckpt64"),
    pytest.param((1, 37, 1, 2, 16, 16), True, (), id="T37-gqa2-init-no-ckpt"),
]


# Per output: (rtol, atol). bf16 outputs are rounded to bf16; states stay fp32 from the same (upcast) inputs.
TOLERANCES = {
    torch.float32: {"o": (1e-4, 1e-5), "final_state": (1e-4, 1e-5), "checkpoint_states": (1e-4, 1e-5)},
    torch.bfloat16: {"o": (2e-2, 2e-2), "final_state": (1e-3, 1e-4), "checkpoint_states": (1e-3, 1e-4)},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("dims, use_initial_state, offsets", CASES)
def test_matches_reference(dims, use_initial_state, offsets, dtype):
    batch_size, seq_len, num_k_heads, num_v_heads, head_k_dim, head_v_dim = dims
    q, k, v, g, beta = gdn_inputs(*dims, dtype=dtype)
    h0 = torch.randn(batch_size, num_v_heads, head_k_dim, head_v_dim) if use_initial_state else None
    expected = chunk_gated_delta_rule_ref(q, k, v, g, beta, initial_state=h0, checkpoint_offsets=offsets)
    actual = chunk_gated_delta_rule_triton(q, k, v, g, beta, initial_state=h0, checkpoint_offsets=offsets)
    for name, a, e in zip(("o", "final_state", "checkpoint_states"), actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype, name
        rtol, atol = TOLERANCES[dtype][name]
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def test_without_l2norm_and_with_scale():
    """Unnormalised keys with beta <= 1 can grow the state; small k keeps the reference stable."""
    q, k, v, g, beta = gdn_inputs(1, 70, 1, 2, 16, 16)
    k = k * 0.2
    kwargs = dict(use_qk_l2norm=False, scale=0.3, checkpoint_offsets=(33,))
    expected = chunk_gated_delta_rule_ref(q, k, v, g, beta, **kwargs)
    actual = chunk_gated_delta_rule_triton(q, k, v, g, beta, **kwargs)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


def test_half_inputs_give_half_outputs_and_fp32_states():
    q, k, v, g, beta = gdn_inputs(1, 37, 1, 1, 16, 16, dtype=torch.bfloat16)
    o, final_state, checkpoint_states = chunk_gated_delta_rule_triton(q, k, v, g, beta, checkpoint_offsets=(7,))
    ref_o, ref_state, ref_checkpoints = chunk_gated_delta_rule_ref(q, k, v, g, beta, checkpoint_offsets=(7,))
    assert o.dtype == torch.bfloat16 and final_state.dtype == checkpoint_states.dtype == torch.float32
    torch.testing.assert_close(o, ref_o, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(final_state, ref_state, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(checkpoint_states, ref_checkpoints, rtol=1e-3, atol=1e-4)


def test_checkpoint_equals_a_split_run():
    """The state at an offset is what a second call, started from it, continues from: vLLM's split recipe."""
    seq_len, cut = CHUNK_SIZE + 11, 29
    q, k, v, g, beta = gdn_inputs(1, seq_len, 1, 1, 16, 16)
    o, final_state, (checkpoint,) = chunk_gated_delta_rule_triton(q, k, v, g, beta, checkpoint_offsets=(cut,))
    tail = [x[:, cut:] for x in (q, k, v, g, beta)]
    o_tail, final_tail, _ = chunk_gated_delta_rule_triton(*tail, initial_state=checkpoint)
    torch.testing.assert_close(o_tail, o[:, cut:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(final_tail, final_state, rtol=1e-4, atol=1e-5)
