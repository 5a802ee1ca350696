"""Mamba's (Jamba's) selective scan: the Triton kernel (interpreted), the CPU path and the packed variable-length op
against the token-by-token reference, which itself agrees with transformers' own Jamba scan; argument errors name
the fix."""

import pytest
import torch
from transformers.models.jamba.modeling_jamba import mamba_selective_scan, mamba_selective_state_update

from hf_hybrid_cache import kernels
from hf_hybrid_cache.kernels import scan_cpu
from hf_hybrid_cache.kernels.reference import selective_scan_ref
from hf_hybrid_cache.kernels.scan_cpu import recurrent_selective_scan_cpu, selective_scan_cpu
from hf_hybrid_cache.kernels.scan_triton import recurrent_selective_scan_triton, selective_scan_triton


def scan_inputs(batch_size, seq_len, dim, state_size, dtype=torch.float32, groups=None):
    """x, dt `[B, T, D]`, A `[D, N]` (negative, as Jamba's S4D init: -1 ... -N per channel, times a random
    scale), B, C `[B, T, N]` (or `[B, T, groups, N]`), D, dt_bias `[D]`."""
    x = torch.randn(batch_size, seq_len, dim, dtype=dtype)
    dt = torch.randn(batch_size, seq_len, dim, dtype=dtype)
    A = -torch.arange(1, state_size + 1).float()[None, :] * torch.rand(dim, 1)
    group_shape = () if groups is None else (groups,)
    B = torch.randn(batch_size, seq_len, *group_shape, state_size, dtype=dtype)
    C = torch.randn(batch_size, seq_len, *group_shape, state_size, dtype=dtype)
    return x, dt, A, B, C, torch.randn(dim), torch.randn(dim)


# (B, T, D, N), an initial state, checkpoint offsets: D = 40 spans two 32-channel tiles (the last masked), N = 12 is
# masked too; the offsets hit the first token, the middle and the last; T = 130 crosses the CPU path's time blocks.
CASES = [
    pytest.param((1, 37, 16, 16), True, (1, 5, 37), id="T37-init-ckpt1,5,37"),
    pytest.param((2, 20, 40, 12), False, (1, 10, 11, 20), id="T20-B2-D40-N12-ckpt1,10,11,20"),
    pytest.param((1, 130, 8, 16), True, (127, 128, 129, 130), id="T130-init-ckpt127..130"),
    pytest.param((1, 1, 16, 16), True, (1,), id="T1-ckpt1"),
    pytest.param((1, 9, 16, 16), False, (), id="T9-no-ckpt"),
]
PATHS = {"triton": selective_scan_triton, "cpu": selective_scan_cpu}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dims, use_initial_state, offsets", CASES)
def test_scan_matches_reference(path, dims, use_initial_state, offsets):
    batch_size, seq_len, dim, state_size = dims
    x, dt, A, B, C, D, dt_bias = scan_inputs(*dims)
    h0 = torch.randn(batch_size, dim, state_size) if use_initial_state else None
    expected = selective_scan_ref(x, dt, A, B, C, D, dt_bias, initial_state=h0, checkpoint_offsets=offsets)
    actual = PATHS[path](x, dt, A, B, C, D, dt_bias, initial_state=h0, checkpoint_offsets=offsets)
    for name, a, e in zip(("y", "final_state", "checkpoint_states"), actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype, name
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("path", list(PATHS))
def test_without_skip_and_bias_and_in_bf16(path):
    x, dt, A, B, C, _, _ = scan_inputs(1, 20, 16, 16, dtype=torch.bfloat16)
    expected = selective_scan_ref(x, dt, A, B, C, checkpoint_offsets=(7,))
    actual = PATHS[path](x, dt, A, B, C, checkpoint_offsets=(7,))
    assert actual[0].dtype == torch.bfloat16 and actual[1].dtype == torch.float32
    torch.testing.assert_close(actual[0], expected[0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(actual[1], expected[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(actual[2], expected[2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("path", list(PATHS))
def test_channels_read_their_group_of_B_and_C(path):
    """Zamba's heads: B and C per group of channels; 3 groups of 16 channels span the 32-channel tiles unevenly."""
    x, dt, A, B, C, D, dt_bias = scan_inputs(2, 21, 48, 12, groups=3)
    h0 = torch.randn(2, 48, 12)
    expected = selective_scan_ref(x, dt, A, B, C, D, dt_bias, initial_state=h0, checkpoint_offsets=(4, 21))
    for a, e in zip(PATHS[path](x, dt, A, B, C, D, dt_bias, initial_state=h0, checkpoint_offsets=(4, 21)), expected):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)
    # One group per channel's tile-mate: the reference's own grouping against an explicit per-group run.
    first = selective_scan_ref(x[..., :16], dt[..., :16], A[:16], B[:, :, 0], C[:, :, 0], D[:16], dt_bias[:16],
                               initial_state=h0[:, :16])
    torch.testing.assert_close(expected[0][..., :16], first[0], rtol=1e-5, atol=1e-6)


def test_cpu_time_blocks_change_nothing(monkeypatch):
    x, dt, A, B, C, D, dt_bias = scan_inputs(1, 50, 16, 16)
    whole = selective_scan_cpu(x, dt, A, B, C, D, dt_bias, checkpoint_offsets=(3, 17))
    monkeypatch.setattr(scan_cpu, "TIME_BLOCK", 7)
    for a, e in zip(selective_scan_cpu(x, dt, A, B, C, D, dt_bias, checkpoint_offsets=(3, 17)), whole):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_reference_matches_transformers_jamba_scan():
    """Our oracle agrees with transformers' Jamba scan (layout `[B, D, T]`, dt bias and softplus inside, D skip) and
    its decode step, so the one-pass layer computes what transformers' does."""
    x, dt, A, B, C, D, dt_bias = scan_inputs(2, 30, 16, 16)
    y, state, _ = selective_scan_ref(x, dt, A, B, C, D, dt_bias)
    hf_y, hf_state = mamba_selective_scan(x.transpose(1, 2), dt.transpose(1, 2), A, B.transpose(1, 2),
                                          C.transpose(1, 2), D=D, delta_bias=dt_bias, delta_softplus=True,
                                          return_last_state=True)
    torch.testing.assert_close(y, hf_y.transpose(1, 2), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state, hf_state, rtol=1e-4, atol=1e-5)
    hf_next = state.clone()
    hf_step = mamba_selective_state_update(hf_next, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, dt_bias=dt_bias,
                                           dt_softplus=True)
    y, state, _ = selective_scan_ref(x[:, :1], dt[:, :1], A, B[:, :1], C[:, :1], D, dt_bias, initial_state=state)
    torch.testing.assert_close(y[:, 0], hf_step, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, hf_next, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", [recurrent_selective_scan_cpu, recurrent_selective_scan_triton], ids=["cpu", "triton"])
def test_decode_steps_update_the_state_in_place(impl):
    x, dt, A, B, C, D, dt_bias = scan_inputs(2, 3, 40, 12)
    state = torch.randn(2, 40, 12)
    expected_y, expected_state, _ = selective_scan_ref(x, dt, A, B, C, D, dt_bias, initial_state=state)
    address = state.data_ptr()
    torch.testing.assert_close(impl(x, dt, A, B, C, D, dt_bias, state), expected_y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, expected_state, rtol=1e-5, atol=1e-6)
    assert state.data_ptr() == address


def test_packed_sequences_continue_their_slots():
    """A prefill continuing its slot, a decode step and a fresh prefill packed in one row: each equals its own
    reference run, the slots hold the final states, the checkpoints come sequence by sequence."""
    cu_seqlens, slots, has_initial = [0, 20, 21, 58], [2, 0, 1], [True, True, False]
    x, dt, A, B, C, D, dt_bias = scan_inputs(1, 58, 16, 16)
    states = torch.randn(3, 16, 16)
    before = states.clone()
    offsets = [(5, 20), (1,), (17,)]
    y, checkpoints = kernels.selective_scan_varlen(x, dt, A, B, C, D, dt_bias, cu_seqlens, states, slots, has_initial,
                                                   checkpoint_offsets=offsets)
    expected_checkpoints = []
    for i, (begin, end) in enumerate(zip(cu_seqlens, cu_seqlens[1:])):
        initial = before[slots[i] : slots[i] + 1] if has_initial[i] else None
        e_y, e_state, e_ckpt = selective_scan_ref(x[:, begin:end], dt[:, begin:end], A, B[:, begin:end],
                                                  C[:, begin:end], D, dt_bias, initial_state=initial,
                                                  checkpoint_offsets=offsets[i])
        torch.testing.assert_close(y[:, begin:end], e_y, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(states[slots[i]], e_state[0], rtol=1e-4, atol=1e-5)
        expected_checkpoints.append(e_ckpt[:, 0])
    torch.testing.assert_close(checkpoints, torch.cat(expected_checkpoints), rtol=1e-4, atol=1e-5)


def test_bad_arguments_name_the_fix():
    x, dt, A, B, C, D, dt_bias = scan_inputs(1, 8, 16, 16)
    with pytest.raises(ValueError, match=r"A must be 2-D \[D, N\]"):
        kernels.selective_scan(x, dt, A[:, 0], B, C)
    with pytest.raises(ValueError, match=r"B must have shape \[B, T, N\]"):
        kernels.selective_scan(x, dt, A, B[..., :8], C)
    with pytest.raises(ValueError, match="must be a multiple of G = 3 groups"):
        kernels.selective_scan(x, dt, A, B[:, :, None].expand(-1, -1, 3, -1), C[:, :, None].expand(-1, -1, 3, -1))
    with pytest.raises(ValueError, match=r"dt_bias must have shape \[D\]"):
        kernels.selective_scan(x, dt, A, B, C, D, dt_bias[:4])
    with pytest.raises(TypeError, match="state must be float32"):
        kernels.recurrent_selective_scan(x, dt, A, B, C, state=torch.zeros(1, 16, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"checkpoint_offsets must be strictly increasing"):
        kernels.selective_scan(x, dt, A, B, C, checkpoint_offsets=(0,))
