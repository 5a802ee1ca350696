"""KDA, the delta rule with a decay per key channel (Kimi-Linear): the Triton kernels (interpreted), the CPU path, the
decode step and the packed variable-length op against the token-by-token reference, which itself agrees with
transformers' own Kimi-Linear functions."""

import pytest
import torch
from transformers.models.kimi_linear.modeling_kimi_linear import (
    chunk_kimi_delta_attention,
    recurrent_kimi_delta_attention,
)

from hf_hybrid_cache import kernels
from hf_hybrid_cache.kernels import kda_cpu
from hf_hybrid_cache.kernels.chunk_triton import chunk_gated_delta_rule_triton
from hf_hybrid_cache.kernels.kda_cpu import chunk_kda_cpu
from hf_hybrid_cache.kernels.recurrent_cpu import recurrent_gated_delta_rule_cpu
from hf_hybrid_cache.kernels.recurrent_triton import recurrent_gated_delta_rule_triton
from hf_hybrid_cache.kernels.reference import chunk_gated_delta_rule_ref


def kda_inputs(batch_size, seq_len, num_k_heads, num_v_heads, head_k_dim, head_v_dim, dtype=torch.float32):
    """q, k `[B, T, Hk, K]`, v `[B, T, Hv, V]`, g (log decay per key channel, in [-1, 0], a few channels at -12:
    decays that vanish within a chunk) `[B, T, Hv, K]` and beta `[B, T, Hv]`."""
    q = torch.randn(batch_size, seq_len, num_k_heads, head_k_dim, dtype=dtype)
    k = torch.randn(batch_size, seq_len, num_k_heads, head_k_dim, dtype=dtype)
    v = torch.randn(batch_size, seq_len, num_v_heads, head_v_dim, dtype=dtype)
    g = -torch.rand(batch_size, seq_len, num_v_heads, head_k_dim)
    g[..., ::5] = -12.0
    beta = torch.rand(batch_size, seq_len, num_v_heads)
    return q, k, v, g, beta


# (B, T, Hk, Hv, K, V), an initial state, checkpoint offsets: K = 24 and V = 80 exercise the head-dim masks; the
# offsets hit the first token, CPU chunk edges (16, 17), Triton chunk edges (64, 65), the middle and the last token.
CASES = [
    pytest.param((1, 37, 1, 1, 16, 16), True, (1, 5, 16, 17, 37), id="T37-K16-init-ckpt1,5,16,17,37"),
    pytest.param((2, 70, 2, 4, 32, 16), False, (1, 32, 64, 65, 70), id="T70-gqa2-B2-K32-ckpt1,32,64,65,70"),
    pytest.param((1, 130, 1, 1, 24, 80), True, (63, 64, 128, 129), id="T130-K24-V80-init-ckpt63..129"),
    pytest.param((1, 1, 1, 2, 16, 16), True, (1,), id="T1-ckpt1"),
    pytest.param((1, 65, 2, 2, 16, 32), False, (), id="T65-one-token-tail-no-ckpt"),
]
PATHS = {"triton": chunk_gated_delta_rule_triton, "cpu": chunk_kda_cpu}
TOLERANCES = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dims, use_initial_state, offsets", CASES)
def test_chunk_matches_reference(path, dims, use_initial_state, offsets):
    batch_size, seq_len, num_k_heads, num_v_heads, head_k_dim, head_v_dim = dims
    q, k, v, g, beta = kda_inputs(*dims)
    h0 = torch.randn(batch_size, num_v_heads, head_k_dim, head_v_dim) if use_initial_state else None
    expected = chunk_gated_delta_rule_ref(q, k, v, g, beta, initial_state=h0, checkpoint_offsets=offsets)
    actual = PATHS[path](q, k, v, g, beta, initial_state=h0, checkpoint_offsets=offsets)
    for name, a, e in zip(("o", "final_state", "checkpoint_states"), actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype, name
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("path", list(PATHS))
def test_bf16_inputs_give_bf16_outputs_and_fp32_states(path):
    q, k, v, g, beta = kda_inputs(1, 40, 1, 2, 16, 16, dtype=torch.bfloat16)
    expected = chunk_gated_delta_rule_ref(q, k, v, g, beta, checkpoint_offsets=(20,))
    actual = PATHS[path](q, k, v, g, beta, checkpoint_offsets=(20,))
    assert actual[0].dtype == torch.bfloat16 and actual[1].dtype == actual[2].dtype == torch.float32
    torch.testing.assert_close(actual[0], expected[0], **TOLERANCES[torch.bfloat16])
    torch.testing.assert_close(actual[1], expected[1], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("path", list(PATHS))
def test_without_l2norm_and_with_scale(path):
    q, k, v, g, beta = kda_inputs(1, 50, 1, 1, 16, 16)
    kwargs = dict(use_qk_l2norm=False, scale=0.3, checkpoint_offsets=(33,))
    expected = chunk_gated_delta_rule_ref(q, 0.2 * k, v, g, beta, **kwargs)
    for a, e in zip(PATHS[path](q, 0.2 * k, v, g, beta, **kwargs), expected):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


def test_cpu_path_bounds_its_decay_tensor(monkeypatch):
    """Chunks grouped so that the decay tensor stays small give the same result as one group."""
    q, k, v, g, beta = kda_inputs(1, 100, 1, 2, 16, 16)
    whole = chunk_kda_cpu(q, k, v, g, beta, checkpoint_offsets=(50,))
    monkeypatch.setattr(kda_cpu, "DECAY_ELEMENTS", 1)  # one chunk per group
    for a, e in zip(chunk_kda_cpu(q, k, v, g, beta, checkpoint_offsets=(50,)), whole):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_reference_matches_transformers_kimi_linear():
    """Our oracle agrees with transformers' chunked and recurrent Kimi-Linear delta attention (l2norm in the kernel,
    scale K ** -0.5), so the one-pass layers compute what transformers' do."""
    q, k, v, g, beta = kda_inputs(2, 50, 3, 3, 16, 16)
    h0 = torch.randn(2, 3, 16, 16)
    o, state, _ = chunk_gated_delta_rule_ref(q, k, v, g, beta, initial_state=h0)
    hf_o, hf_state = chunk_kimi_delta_attention(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                                use_qk_l2norm_in_kernel=True)
    torch.testing.assert_close(o, hf_o, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state, hf_state, rtol=1e-4, atol=1e-5)
    step = [x[:, :1] for x in (q, k, v, g, beta)]
    hf_o, hf_state = recurrent_kimi_delta_attention(*step[:3], g=step[3], beta=step[4], initial_state=h0,
                                                    output_final_state=True, use_qk_l2norm_in_kernel=True)
    o, state, _ = chunk_gated_delta_rule_ref(*step, initial_state=h0)
    torch.testing.assert_close(o, hf_o, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, hf_state, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", [recurrent_gated_delta_rule_cpu, recurrent_gated_delta_rule_triton], ids=["cpu", "triton"])
def test_decode_steps_update_the_state_in_place(impl):
    q, k, v, g, beta = kda_inputs(2, 3, 1, 2, 24, 16)
    state = torch.randn(2, 2, 24, 16)
    expected_o, expected_state, _ = chunk_gated_delta_rule_ref(q, k, v, g, beta, initial_state=state)
    address = state.data_ptr()
    torch.testing.assert_close(impl(q, k, v, g, beta, state=state), expected_o, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, expected_state, rtol=1e-5, atol=1e-6)
    assert state.data_ptr() == address


def test_packed_sequences_continue_their_slots():
    """Two prefills (one continuing its slot, one fresh) and a decode step packed in one row: each equals its own
    reference run, the slots hold the final states, the checkpoints come sequence by sequence."""
    lengths, slots, has_initial = [20, 1, 37], [2, 0, 1], [True, True, False]
    q, k, v, g, beta = kda_inputs(1, sum(lengths), 1, 2, 16, 16)
    states = torch.randn(3, 2, 16, 16)
    before = states.clone()
    cu_seqlens = [0, 20, 21, 58]
    offsets = [(5, 20), (1,), (17,)]
    o, checkpoints = kernels.gated_delta_rule_varlen(q, k, v, g, beta, cu_seqlens, states, slots, has_initial,
                                                     checkpoint_offsets=offsets)
    expected_checkpoints = []
    for i, (begin, end) in enumerate(zip(cu_seqlens, cu_seqlens[1:])):
        initial = before[slots[i] : slots[i] + 1] if has_initial[i] else None
        e_o, e_state, e_ckpt = chunk_gated_delta_rule_ref(*(x[:, begin:end] for x in (q, k, v, g, beta)),
                                                          initial_state=initial, checkpoint_offsets=offsets[i])
        torch.testing.assert_close(o[:, begin:end], e_o, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(states[slots[i]], e_state[0], rtol=1e-4, atol=1e-5)
        expected_checkpoints.append(e_ckpt[:, 0])
    torch.testing.assert_close(checkpoints, torch.cat(expected_checkpoints), rtol=1e-4, atol=1e-5)


def test_a_decay_of_the_wrong_shape_names_both_shapes():
    q, k, v, g, beta = kda_inputs(1, 8, 1, 2, 16, 16)
    with pytest.raises(ValueError, match=r"\[B, T, Hv\] \(a decay per head\) or \[B, T, Hv, K\]"):
        kernels.chunk_gated_delta_rule(q, k, v, g[:, :, :1, 0], beta)
    with pytest.raises(ValueError, match=r"g must have shape \[B, T, Hv, K\] \(a decay per key channel\)"):
        kernels.chunk_gated_delta_rule(q, k, v, g[..., :8], beta)
