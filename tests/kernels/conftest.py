"""Kernel tests: every Triton kernel runs in the Triton interpreter on CPU tensors, against its reference.

`import triton` builds triton's own library (tl.sum, tl.cumsum, tl.zeros, ...) and `@triton.jit` builds our
kernels, each compiled or interpreted by TRITON_INTERPRET at that moment: tests/conftest.py sets it before
anything imports triton, and `test_interpreter.py` checks that it worked.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def nan_filled_empty(monkeypatch):
    """`torch.empty*` return NaN-filled float tensors during these tests: an output element a kernel
    forgets to write (or an intermediate it reads unwritten) then fails the comparison with the reference."""

    def filled(allocate):
        def allocate_nan(*args, **kwargs):
            x = allocate(*args, **kwargs)
            return x.fill_(float("nan")) if x.is_floating_point() else x

        return allocate_nan

    monkeypatch.setattr(torch, "empty", filled(torch.empty))
    monkeypatch.setattr(torch, "empty_like", filled(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", filled(torch.Tensor.new_empty))
