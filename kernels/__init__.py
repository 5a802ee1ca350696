"""GDN and causal-conv kernels: Triton on CUDA, PyTorch on CPU, one reference per op.

Installed as `hf_hybrid_cache.kernels`; nothing here imports transformers.
"""

from .dispatch import (
    causal_conv1d,
    causal_conv1d_update,
    causal_conv1d_varlen,
    chunk_gated_delta_rule,
    gated_delta_rule_varlen,
    recurrent_gated_delta_rule,
)

from .dispatch import __all__  # noqa: F401 - the public ops, listed once in dispatch.py
