"""Public entry points of the kernels package: one function per op, dispatching on the tensors' device.

PROVISIONAL: every op runs its PyTorch reference until the Triton kernels and the fast CPU path land
(issue 3). The signatures here are the contract the core relies on.
"""

from .reference import (
    causal_conv1d_ref as causal_conv1d,
    causal_conv1d_update_ref as causal_conv1d_update,
    chunk_gated_delta_rule_ref as chunk_gated_delta_rule,
    paged_kv_gather_ref as paged_kv_gather,
    paged_kv_write_ref as paged_kv_write,
    recurrent_gated_delta_rule_ref as recurrent_gated_delta_rule,
)

__all__ = [
    "causal_conv1d",
    "causal_conv1d_update",
    "chunk_gated_delta_rule",
    "paged_kv_gather",
    "paged_kv_write",
    "recurrent_gated_delta_rule",
]
