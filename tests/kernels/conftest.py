"""Kernel tests: every Triton kernel runs in the Triton interpreter on CPU tensors, against its reference.

`import triton` builds triton's own library (tl.sum, tl.cumsum, tl.zeros, ...) and `@triton.jit` builds our
kernels, each compiled or interpreted by TRITON_INTERPRET at that moment. This conftest sets it before our
Triton modules are imported; `test_interpreter.py` checks that it worked.
"""

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"


def _reimport_triton_interpreted() -> None:
    """Other test folders may import triton first (torch._dynamo does, to probe for it), leaving its library
    compiled, which interpreted kernels cannot call. Drop its pure-Python modules so that the next import
    builds them interpreted; the compiled extension `triton._C` stays, as it cannot be loaded twice. Nothing
    in a CPU-only test run compiles Triton code, so no caller of the old modules is affected."""
    language = sys.modules.get("triton.language")
    if language is None or type(language.sum).__name__ == "InterpretedFunction":
        return
    for name in [n for n in sys.modules if n.split(".")[0] == "triton" and not n.startswith("triton._C")]:
        del sys.modules[name]


_reimport_triton_interpreted()

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
