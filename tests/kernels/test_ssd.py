"""Mamba2's SSD scan: the Triton kernels (interpreted), the CPU path and the packed variable-length op against the
token-by-token reference, which itself agrees with transformers' own chunked scan; argument errors name the fix."""

import pytest
import torch

from hf_hybrid_cache import kernels
from hf_hybrid_cache.kernels.reference import chunk_ssd_ref, recurrent_ssd_ref
from hf_hybrid_cache.kernels.ssd_cpu import chunk_ssd_cpu, recurrent_ssd_cpu
from hf_hybrid_cache.kernels.ssd_triton import CHUNK_SIZE, chunk_ssd_triton, recurrent_ssd_triton

DT_LIMIT = (0.001, 4.0)


def ssd_inputs(batch_size, seq_len, num_heads, head_dim, num_groups, state_size, dtype=torch.float32):
    """x `[B, T, H, P]`, dt `[B, T, H]`, A `[H]` (negative), B, C `[B, T, G, N]`, D, dt_bias `[H]`."""
    x = torch.randn(batch_size, seq_len, num_heads, head_dim, dtype=dtype)
    dt = torch.randn(batch_size, seq_len, num_heads, dtype=dtype)
    A = -torch.exp(torch.rand(num_heads))
    B = torch.randn(batch_size, seq_len, num_groups, state_size, dtype=dtype)
    C = torch.randn(batch_size, seq_len, num_groups, state_size, dtype=dtype)
    return x, dt, A, B, C, torch.randn(num_heads), torch.randn(num_heads)


# (B, T, H, P, G, N), an initial state, checkpoint offsets: P = 40 spans three 16-column tiles (the last masked),
# N = 24 is masked too; the offsets hit the first token, chunk edges (32, 33, 64, 65), the middle and the last token.
CASES = [
    pytest.param((1, 37, 2, 16, 1, 16), True, (1, 5, 37), id="T37-G1-init-ckpt1,5,37"),
    pytest.param((2, 70, 4, 8, 2, 24), False, (1, 32, 33, 64, 65, 70), id="T70-B2-G2-N24-ckpt1,32,33,64,65,70"),
    pytest.param((1, 130, 2, 40, 1, 16), True, (63, 64, 128, 129, 130), id="T130-P40-init-ckpt63..130"),
    pytest.param((1, 1, 2, 16, 2, 16), True, (1,), id="T1-ckpt1"),
    pytest.param((1, 65, 2, 16, 1, 16), False, (), id="T65-one-token-tail-no-ckpt"),
    # The tiles of larger states (`ssd_triton.chunk_config`): 32-token chunks at N = 128, 16 at N = 256.
    pytest.param((1, 70, 2, 24, 1, 128), True, (16, 32, 33, 70), id="T70-P24-N128-init-ckpt16,32,33,70"),
    pytest.param((1, 40, 2, 16, 2, 256), False, (16, 17, 40), id="T40-G2-N256-ckpt16,17,40"),
]
PATHS = {"triton": chunk_ssd_triton, "cpu": chunk_ssd_cpu}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dims, use_initial_state, offsets", CASES)
def test_chunked_scan_matches_reference(path, dims, use_initial_state, offsets):
    x, dt, A, B, C, D, dt_bias = ssd_inputs(*dims)
    batch_size, _, num_heads, head_dim, _, state_size = dims
    h0 = torch.randn(batch_size, num_heads, head_dim, state_size) if use_initial_state else None
    expected = chunk_ssd_ref(x, dt, A, B, C, D, dt_bias, DT_LIMIT, initial_state=h0, checkpoint_offsets=offsets)
    actual = PATHS[path](x, dt, A, B, C, D, dt_bias, DT_LIMIT, initial_state=h0, checkpoint_offsets=offsets)
    for name, a, e in zip(("y", "final_state", "checkpoint_states"), actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype, name
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("path", list(PATHS))
def test_without_skip_bias_or_limit_and_bf16_inputs(path):
    x, dt, A, B, C, _, _ = ssd_inputs(2, 40, 2, 16, 1, 16, dtype=torch.bfloat16)
    expected = chunk_ssd_ref(x, dt, A, B, C, checkpoint_offsets=(17,))
    y, final_state, checkpoints = PATHS[path](x, dt, A, B, C, checkpoint_offsets=(17,))
    assert y.dtype == torch.bfloat16 and final_state.dtype == checkpoints.dtype == torch.float32
    torch.testing.assert_close(y, expected[0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(final_state, expected[1], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(checkpoints, expected[2], rtol=1e-3, atol=1e-3)


def test_reference_agrees_with_transformers_chunked_scan():
    """The oracle is Mamba2's scan as transformers computes it (Nemotron-H's torch path, 5.24 and 5.25)."""
    mamba2_chunk_scan = pytest.importorskip("transformers.models.nemotron_h.modeling_nemotron_h").mamba2_chunk_scan
    x, dt, A, B, C, D, dt_bias = ssd_inputs(2, 150, 4, 8, 2, 16)
    h0 = torch.randn(2, 4, 8, 16)
    expected_y, expected_state = mamba2_chunk_scan(x, dt, A, B, C, 64, D=D, dt_bias=dt_bias, initial_states=h0,
                                                   dt_softplus=True, dt_limit=DT_LIMIT, return_final_states=True)
    y, state, _ = chunk_ssd_ref(x, dt, A, B, C, D, dt_bias, DT_LIMIT, initial_state=h0)
    torch.testing.assert_close(y, expected_y, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state, expected_state, rtol=1e-4, atol=1e-4)


def test_a_checkpoint_is_where_a_split_run_starts():
    seq_len, cut = CHUNK_SIZE + 11, 29
    x, dt, A, B, C, D, dt_bias = ssd_inputs(1, seq_len, 2, 16, 1, 16)
    y, final_state, (checkpoint,) = chunk_ssd_triton(x, dt, A, B, C, D, dt_bias, checkpoint_offsets=(cut,))
    tail = [t[:, cut:] for t in (x, dt)], [t[:, cut:] for t in (B, C)]
    y_tail, final_tail, _ = chunk_ssd_triton(*tail[0], A, *tail[1], D, dt_bias, initial_state=checkpoint)
    torch.testing.assert_close(y_tail, y[:, cut:], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(final_tail, final_state, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("recurrent", [recurrent_ssd_triton, recurrent_ssd_cpu], ids=["triton", "cpu"])
@pytest.mark.parametrize("dims", [(1, 1, 2, 16, 1, 16), (2, 3, 4, 40, 2, 24)], ids=["T1", "T3-P40-N24-G2"])
def test_decode_matches_reference_and_updates_the_state_in_place(recurrent, dims):
    x, dt, A, B, C, D, dt_bias = ssd_inputs(*dims)
    batch_size, _, num_heads, head_dim, _, state_size = dims
    state = torch.randn(batch_size, num_heads, head_dim, state_size)
    ref_state, address = state.clone(), state.data_ptr()
    expected = recurrent_ssd_ref(x, dt, A, B, C, D, dt_bias, DT_LIMIT, ref_state)
    actual = recurrent(x, dt, A, B, C, D, dt_bias, DT_LIMIT, state)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state, ref_state, rtol=1e-4, atol=1e-4)
    assert state.data_ptr() == address


def test_packed_sequences_match_each_sequence_alone():
    """Two decode rows (one fresh), a prompt with checkpoints and a continued chunk, packed in one row."""
    lengths, fresh = [1, 40, 1, 70], [False, True, True, False]
    offsets = [[1], [16, 40], [], [1, 64, 70]]
    x, dt, A, B, C, D, dt_bias = ssd_inputs(1, sum(lengths), 2, 16, 1, 16)
    pool = torch.randn(6, 2, 16, 16)
    slots = [4, 0, 2, 5]
    cu_seqlens = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    expected_pool = pool.clone()
    expected_y, expected_checkpoints = [], []
    for i, (begin, end) in enumerate(zip(cu_seqlens, cu_seqlens[1:])):
        initial = None if fresh[i] else pool[slots[i] : slots[i] + 1]
        y, final, checkpoints = chunk_ssd_ref(x[:, begin:end], dt[:, begin:end], A, B[:, begin:end], C[:, begin:end],
                                              D, dt_bias, DT_LIMIT, initial_state=initial, checkpoint_offsets=offsets[i])
        expected_y.append(y)
        expected_checkpoints.append(checkpoints[:, 0])
        expected_pool[slots[i]] = final[0]
    y, checkpoints = kernels.ssd_varlen(x, dt, A, B, C, D, dt_bias, DT_LIMIT, cu_seqlens, pool, slots,
                                        [not f for f in fresh], offsets)
    torch.testing.assert_close(y, torch.cat(expected_y, dim=1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(checkpoints, torch.cat(expected_checkpoints), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pool, expected_pool, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("overrides, error, message", [
    (dict(x=torch.randn(1, 5, 3, 8)), ValueError, r"H = 3 heads must be a multiple of G = 2 groups"),
    (dict(dt=torch.randn(1, 5, 2)), ValueError, r"dt must have shape \[B, T, H\] = \[1, 5, 4\]"),
    (dict(A=torch.randn(3)), ValueError, r"A must have shape \[H\] = \[4\]"),
    (dict(C=torch.randn(1, 5, 2, 8)), ValueError, r"C must have shape \[B, T, G, N\] \(as B\)"),
    (dict(dt_limit=(1.0, 0.5)), ValueError, r"dt_limit must be \(min, max\) with min <= max"),
    (dict(B=torch.randint(0, 3, (1, 5, 2, 16))), TypeError, r"B must be a floating-point tensor"),
    (dict(initial_state=torch.randn(1, 4, 8, 8)), ValueError, r"initial_state must have shape \[B, H, P, N\]"),
])
def test_bad_arguments_name_the_fix(overrides, error, message):
    x, dt, A, B, C, D, dt_bias = ssd_inputs(1, 5, 4, 8, 2, 16)
    arguments = {**dict(x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias), **overrides}
    with pytest.raises(error, match=message):
        kernels.chunk_ssd(**arguments)


def test_the_decode_state_must_be_fp32():
    x, dt, A, B, C, D, dt_bias = ssd_inputs(1, 1, 4, 8, 2, 16)
    with pytest.raises(TypeError, match="state must be float32"):
        kernels.recurrent_ssd(x, dt, A, B, C, D, dt_bias, state=torch.zeros(1, 4, 8, 16, dtype=torch.bfloat16))


def test_packed_sequences_skip_the_limit_where_asked():
    """transformers floors the step size of prefills, not of decode steps: per sequence, as `unclamped` says."""
    lengths, unclamped = [1, 1, 20], [True, False, False]
    x, dt, A, B, C, D, dt_bias = ssd_inputs(1, sum(lengths), 2, 16, 1, 16)
    dt_bias = torch.full_like(dt_bias, -6.0)  # steps around and under the floor
    floor = (0.05, float("inf"))
    pool = torch.randn(3, 2, 16, 16)
    cu_seqlens = [0, 1, 2, 22]
    expected_pool, expected_y = pool.clone(), []
    for i, (begin, end) in enumerate(zip(cu_seqlens, cu_seqlens[1:])):
        limit = (0.0, float("inf")) if unclamped[i] else floor
        y, final, _ = chunk_ssd_ref(x[:, begin:end], dt[:, begin:end], A, B[:, begin:end], C[:, begin:end], D, dt_bias,
                                    limit, initial_state=pool[i : i + 1])
        expected_y.append(y)
        expected_pool[i] = final[0]
    floored_first = chunk_ssd_ref(x[:, :1], dt[:, :1], A, B[:, :1], C[:, :1], D, dt_bias, floor, initial_state=pool[:1])[1]
    assert not torch.allclose(expected_pool[0], floored_first[0])  # the floor matters for these steps
    y, _ = kernels.ssd_varlen(x, dt, A, B, C, D, dt_bias, floor, cu_seqlens, pool, [0, 1, 2], [True] * 3,
                              unclamped=unclamped)
    torch.testing.assert_close(y, torch.cat(expected_y, dim=1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pool, expected_pool, rtol=1e-4, atol=1e-4)
