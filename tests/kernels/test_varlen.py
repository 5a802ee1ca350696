"""Packed variable-length ops over a slot pool (continuous batching) against the per-sequence references: the
CPU path through the public entry points, the Triton path (interpreted) through the same composition with
the Triton launchers. Decode rows (one token) and prompt chunks in one call, fresh and continued states,
checkpoints inside sequences, slots not in the batch untouched."""

import pytest
import torch

from hf_hybrid_cache import kernels
from hf_hybrid_cache.kernels.reference import causal_conv1d_ref, chunk_gated_delta_rule_ref
from hf_hybrid_cache.kernels.varlen import causal_conv1d_varlen_impl, gated_delta_rule_varlen_impl

# Four sequences: a continued chunk, a decode step, a fresh prompt, a decode step at a boundary.
LENGTHS = [5, 1, 9, 1]
CU_SEQLENS = [0, 5, 6, 15, 16]
SLOTS = [4, 0, 2, 5]
HAS_INITIAL_STATE = [True, True, False, True]
CHECKPOINTS = [[2, 5], [], [3, 8], [1]]
NUM_SLOTS = 6


def _triton_ops(name):
    if name == "cpu":
        return None
    from hf_hybrid_cache.kernels.chunk_triton import chunk_gated_delta_rule_triton
    from hf_hybrid_cache.kernels.conv_triton import causal_conv1d_triton, causal_conv1d_update_triton
    from hf_hybrid_cache.kernels.recurrent_triton import recurrent_gated_delta_rule_triton

    return (causal_conv1d_triton, causal_conv1d_update_triton), (chunk_gated_delta_rule_triton,
                                                                  recurrent_gated_delta_rule_triton)


def _sequences(x, dim):
    return [x.narrow(dim, begin, end - begin) for begin, end in zip(CU_SEQLENS, CU_SEQLENS[1:])]


@pytest.mark.parametrize("path", ["cpu", "triton"])
def test_conv_matches_each_sequence_alone(path):
    dim, width = 24, 4
    x, weight, bias = torch.randn(1, dim, sum(LENGTHS)), torch.randn(dim, width), torch.randn(dim)
    pool = torch.randn(NUM_SLOTS, dim, width)
    before = pool.clone()
    args = (x, weight, bias, CU_SEQLENS, pool, SLOTS, HAS_INITIAL_STATE)
    if path == "cpu":
        out, checkpoints = kernels.causal_conv1d_varlen(*args, checkpoint_offsets=CHECKPOINTS)
    else:
        out, checkpoints = causal_conv1d_varlen_impl(
            *args, "silu", [tuple(c) for c in CHECKPOINTS], ops=_triton_ops(path)[0]
        )
    expected_checkpoints = []
    for i, x_i in enumerate(_sequences(x, 2)):
        initial = before[SLOTS[i] : SLOTS[i] + 1] if HAS_INITIAL_STATE[i] else None
        expected, final, points = causal_conv1d_ref(x_i, weight, bias, conv_state=initial, checkpoint_offsets=CHECKPOINTS[i])
        torch.testing.assert_close(_sequences(out, 2)[i], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pool[SLOTS[i]], final[0], rtol=1e-5, atol=1e-5)
        expected_checkpoints.append(points[:, 0])
    torch.testing.assert_close(checkpoints, torch.cat(expected_checkpoints), rtol=1e-5, atol=1e-5)
    untouched = [s for s in range(NUM_SLOTS) if s not in SLOTS]
    assert torch.equal(pool[untouched], before[untouched])


@pytest.mark.parametrize("path", ["cpu", "triton"])
def test_delta_rule_matches_each_sequence_alone(path):
    total, num_k_heads, num_v_heads, head_k_dim, head_v_dim = sum(LENGTHS), 2, 4, 16, 32
    q, k = (torch.randn(1, total, num_k_heads, head_k_dim) for _ in range(2))
    v = torch.randn(1, total, num_v_heads, head_v_dim)
    g, beta = -0.5 * torch.rand(1, total, num_v_heads), torch.rand(1, total, num_v_heads)
    pool = torch.randn(NUM_SLOTS, num_v_heads, head_k_dim, head_v_dim)
    before = pool.clone()
    args = (q, k, v, g, beta, CU_SEQLENS, pool, SLOTS, HAS_INITIAL_STATE)
    if path == "cpu":
        out, checkpoints = kernels.gated_delta_rule_varlen(*args, checkpoint_offsets=CHECKPOINTS)
    else:
        out, checkpoints = gated_delta_rule_varlen_impl(
            *args, [tuple(c) for c in CHECKPOINTS], True, None, ops=_triton_ops(path)[1]
        )
    expected_checkpoints = []
    for i, inputs in enumerate(zip(*(_sequences(x, 1) for x in (q, k, v, g, beta)))):
        initial = before[SLOTS[i] : SLOTS[i] + 1] if HAS_INITIAL_STATE[i] else None
        expected, final, points = chunk_gated_delta_rule_ref(*inputs, initial_state=initial, checkpoint_offsets=CHECKPOINTS[i])
        torch.testing.assert_close(_sequences(out, 1)[i], expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(pool[SLOTS[i]], final[0], rtol=1e-4, atol=1e-4)
        expected_checkpoints.append(points[:, 0])
    torch.testing.assert_close(checkpoints, torch.cat(expected_checkpoints), rtol=1e-4, atol=1e-4)
    untouched = [s for s in range(NUM_SLOTS) if s not in SLOTS]
    assert torch.equal(pool[untouched], before[untouched])


def test_bad_packing_is_refused_with_the_fix():
    x, weight, pool = torch.randn(1, 8, 6), torch.randn(8, 4), torch.zeros(3, 8, 4)
    with pytest.raises(ValueError, match="cu_seqlens must rise strictly from 0 to the packed length 6"):
        kernels.causal_conv1d_varlen(x, weight, None, [0, 2, 5], pool, [0, 1], [False, False])
    with pytest.raises(ValueError, match="distinct slots"):
        kernels.causal_conv1d_varlen(x, weight, None, [0, 2, 6], pool, [1, 1], [False, False])
    with pytest.raises(ValueError, match="one list per sequence"):
        kernels.causal_conv1d_varlen(x, weight, None, [0, 2, 6], pool, [0, 1], [False, False], checkpoint_offsets=[[1]])
    with pytest.raises(TypeError, match="float32"):
        q = torch.randn(1, 6, 1, 8)
        kernels.gated_delta_rule_varlen(q, q, q, -torch.rand(1, 6, 1), torch.rand(1, 6, 1), [0, 6],
                                        torch.zeros(2, 1, 8, 8).half(), [0], [False])
