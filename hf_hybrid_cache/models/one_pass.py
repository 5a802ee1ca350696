"""What the one-pass mixers share (`gated_delta_net.py`, `short_conv.py`): they hand a `HybridPrefixCache` their
states at the block boundaries inside a step, so that a prefill saves every boundary it needs in one forward, and
they leave to transformers' own forward what our kernels do not run."""

import torch


class OnePassMixer:
    """Base of our mixers that take their boundary states inside a forward: a model whose recurrent layers are
    all such mixers takes the one-pass path (`patch()`)."""


def runs_on_transformers(module: torch.nn.Module, hidden_states: torch.Tensor, cache, kwargs: dict) -> bool:
    """Whether this forward must be transformers' own: packed sequences (`cu_seq_lens_q`), a cache recording its
    past for transformers' rollback (assisted decoding on a `DynamicCache`), and anything autograd must
    differentiate (our kernels have no backward)."""
    return (
        kwargs.get("cu_seq_lens_q") is not None
        or (cache is not None and cache.is_recording_past(module.layer_idx))
        or (torch.is_grad_enabled() and (hidden_states.requires_grad or any(p.requires_grad for p in module.parameters())))
    )
