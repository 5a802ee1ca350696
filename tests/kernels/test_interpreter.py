"""The kernel tests really run Triton kernels, interpreted: conftest set TRITON_INTERPRET=1 in time."""

import os

import pytest
import torch

from hf_hybrid_cache.kernels import chunk_triton, conv_triton, launch, recurrent_triton

KERNELS = {
    "l2norm": chunk_triton.l2norm_kernel,
    "chunk_kkt": chunk_triton.chunk_kkt_kernel,
    "chunk_solve": chunk_triton.chunk_solve_kernel,
    "chunk_wy": chunk_triton.chunk_wy_kernel,
    "chunk_state": chunk_triton.chunk_state_kernel,
    "chunk_output": chunk_triton.chunk_output_kernel,
    "chunk_checkpoint": chunk_triton.chunk_checkpoint_kernel,
    "recurrent": recurrent_triton.recurrent_gated_delta_rule_kernel,
    "conv": conv_triton.causal_conv1d_kernel,
    "conv_states": conv_triton.causal_conv1d_states_kernel,
    "conv_update": conv_triton.causal_conv1d_update_kernel,
}


@pytest.mark.parametrize("kernel", KERNELS.values(), ids=KERNELS.keys())
def test_kernel_is_interpreted(kernel):
    assert os.environ["TRITON_INTERPRET"] == "1"
    assert launch.is_interpreted(kernel)


def test_an_interpreted_launch_writes_its_output():
    """conftest makes torch.empty NaN-filled, so a finite result means the kernel's grid ran and wrote it."""
    x, weight = torch.randn(1, 6, 5), torch.randn(6, 4)
    assert torch.empty(1).isnan().all()
    out, _, _ = conv_triton.causal_conv1d_triton(x, weight, activation=None)
    torch.testing.assert_close(out, torch.nn.functional.conv1d(torch.nn.functional.pad(x, (3, 0)), weight[:, None], groups=6))


def test_triton_library_is_interpreted():
    """Even when another test folder imported triton first (see conftest), tl.sum and friends are interpreted."""
    import triton.language as tl

    assert launch.is_interpreted(tl.sum) and launch.is_interpreted(tl.cumsum)
