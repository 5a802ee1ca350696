"""Kernel tests: every Triton kernel runs in the Triton interpreter on CPU tensors, against its reference.

TRITON_INTERPRET must be set before a kernel module's `@triton.jit` runs. Only these tests import the
Triton modules (`dispatch.py` imports them for CUDA tensors only), so setting it here, when pytest collects
this folder, comes first; `test_interpreter.py` checks that it did.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


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
