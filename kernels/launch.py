"""Checks and helpers shared by the Triton launchers (`*_triton.py`); imports triton, so import it lazily.

Arguments are validated in `checks.py` first; here only what a kernel launch needs: the device the kernel
can run on, and contiguity of the tensors a kernel writes in place.
"""

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction, KernelInterface


def is_interpreted(kernel) -> bool:
    """True when `kernel` was decorated under TRITON_INTERPRET=1 and so runs on CPU tensors only."""
    while isinstance(kernel, KernelInterface) and not isinstance(kernel, (InterpretedFunction, JITFunction)):
        kernel = kernel.fn  # unwrap @triton.heuristics / @triton.autotune
    return isinstance(kernel, InterpretedFunction)


def check_device(kernel, **tensors: torch.Tensor | None) -> None:
    """CUDA tensors for compiled kernels, CPU tensors for interpreted ones (the test suite's mode)."""
    interpreted = is_interpreted(kernel)
    for name, x in tensors.items():
        if x is None or x.device.type == ("cpu" if interpreted else "cuda"):
            continue
        if interpreted:
            fix = "Triton runs interpreted (TRITON_INTERPRET=1): pass CPU tensors"
        else:
            fix = "the Triton kernels need CUDA tensors: call .cuda() or use the CPU path"
        raise ValueError(f"{name} is on {x.device}; {fix}")


def check_contiguous(**tensors: torch.Tensor) -> None:
    """Caller-owned buffers (states written in place, the page pool) must be contiguous: the kernels index
    them densely, and a contiguous copy would lose the caller's static address or copy the whole pool."""
    for name, x in tensors.items():
        if not x.is_contiguous():
            raise ValueError(
                f"{name} must be contiguous, got strides {x.stride()} for shape {list(x.shape)}; "
                f"allocate it contiguous and keep that tensor"
            )


def block_size(size: int, minimum: int = 16) -> int:
    """Power-of-two block covering `size`; at least 16, the smallest tile tl.dot accepts."""
    return max(triton.next_power_of_2(size), minimum)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get fp32-accurate products (tf32x3: three tensor-core passes, errors near fp32 rounding;
    "ieee" runs on CUDA cores and spills at every K, V >= 32 tile, see benchmarks/compile_check.py); half
    inputs may use tf32. The interpreter computes every product in fp32."""
    return "tf32x3" if dtype == torch.float32 else "tf32"
