"""The public functions on CPU tensors (the plain-PyTorch paths) against the references, and the import
contract: `hf_hybrid_cache.kernels` works without triton, and asks for it only when CUDA tensors need it."""

import subprocess
import sys

import pytest
import torch

from hf_hybrid_cache import kernels
from hf_hybrid_cache.kernels import dispatch, reference


@pytest.mark.parametrize("use_state", [True, False], ids=["state", "zero-state"])
@pytest.mark.parametrize("width, use_bias, activation", [(4, True, "silu"), (3, False, None)], ids=["W4-silu", "W3-lfm2"])
def test_causal_conv1d(use_state, width, use_bias, activation):
    x, weight = torch.randn(2, 7, 37), torch.randn(7, width)
    bias = torch.randn(7) if use_bias else None
    conv_state = torch.randn(2, 7, width) if use_state else None
    kwargs = dict(conv_state=conv_state, activation=activation, checkpoint_offsets=(1, 2, 36, 37))
    expected_outputs = reference.causal_conv1d_ref(x, weight, bias, **kwargs)
    for actual, expected in zip(kernels.causal_conv1d(x, weight, bias, **kwargs), expected_outputs):
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected)


def test_causal_conv1d_update_in_place():
    x, weight, conv_state = torch.randn(2, 7, 2), torch.randn(7, 4), torch.randn(2, 7, 4)
    ref_state, address = conv_state.clone(), conv_state.data_ptr()
    expected = reference.causal_conv1d_update_ref(x, ref_state, weight, activation=None)
    torch.testing.assert_close(kernels.causal_conv1d_update(x, conv_state, weight, activation=None), expected)
    torch.testing.assert_close(conv_state, ref_state)
    assert conv_state.data_ptr() == address


@pytest.mark.parametrize("num_v_heads", [2, 4], ids=["gqa1", "gqa2"])
def test_recurrent_gated_delta_rule_in_place(num_v_heads):
    q, k = torch.randn(2, 3, 2, 16), torch.randn(2, 3, 2, 16)
    v, g, beta = torch.randn(2, 3, num_v_heads, 8), -torch.rand(2, 3, num_v_heads), torch.rand(2, 3, num_v_heads)
    state = torch.randn(2, num_v_heads, 16, 8)
    ref_state, address = state.clone(), state.data_ptr()
    expected = reference.recurrent_gated_delta_rule_ref(q, k, v, g, beta, ref_state)
    torch.testing.assert_close(kernels.recurrent_gated_delta_rule(q, k, v, g, beta, state), expected)
    torch.testing.assert_close(state, ref_state)
    assert state.data_ptr() == address


@pytest.mark.parametrize("op", sorted(set(kernels.__all__) - set(dispatch.COMPOSED_OPS)))
def test_every_op_has_a_triton_launcher(op):
    """What a CUDA tensor would run: `<op>_triton`, found through the lazy-import table."""
    assert dispatch._triton_launcher(op).__name__ == f"{op}_triton"


def test_every_public_op_is_launched_or_composed():
    assert set(kernels.__all__) == set(dispatch._TRITON_MODULES) | set(dispatch.COMPOSED_OPS)


IMPORT_WITHOUT_TRITON = """
import os, sys, torch
os.environ.pop("TRITON_INTERPRET", None)
sys.modules["triton"] = None  # any `import triton` now raises ModuleNotFoundError
from hf_hybrid_cache import kernels
from hf_hybrid_cache.kernels import dispatch
x, weight = torch.ones(1, 3, 5), torch.ones(3, 4)
out, _, _ = kernels.causal_conv1d(x, weight, activation=None)
assert out[0, :, -1].eq(4).all()
assert not any(name.startswith("triton") and sys.modules[name] for name in sys.modules)
try:
    dispatch._triton_launcher("causal_conv1d")
except ImportError as error:
    print("ImportError:", error)
"""


def test_imports_and_runs_on_cpu_without_triton():
    result = subprocess.run([sys.executable, "-c", IMPORT_WITHOUT_TRITON], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "pip install 'hf-hybrid-cache[triton]'" in result.stdout


def test_autocast_does_not_recast_the_kernels():
    """Inside a bf16 autocast region (TRL's trainers generate in one) the kernels keep their own precisions:
    the same results as outside it, and no dtype clash between bf16 products and fp32 states."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 70, 2, 16, generator=generator) for _ in range(3))
    g, beta = -torch.rand(1, 70, 2, generator=generator), torch.rand(1, 70, 2, generator=generator)
    state = torch.randn(1, 2, 16, 16, generator=generator)
    expected = kernels.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=state, checkpoint_offsets=(64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = kernels.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=state, checkpoint_offsets=(64,))
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype
        torch.testing.assert_close(a, e)
