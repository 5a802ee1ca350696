"""Jamba adapter: its Mamba layer continues a multi-token step from the cached SSM state.

transformers' `JambaMambaMixer` (checked with 5.24) reads the cached SSM state only in one-token steps; a
longer step runs `mamba_selective_scan`, which takes no initial state and starts from zeros, so a prompt
continued after a restored prefix (or any chunked prefill) would differ from a cold run. The scan is linear
in its initial state h0: started from h0, every state gains `exp(A * cumsum(dt)) * h0` and every output
`C . exp(A * cumsum(dt)) * h0`. The adapter adds exactly that term around transformers' own scan (kernel or
PyTorch fallback), before the output gate, so the rest of the layer stays transformers' code.
"""

import contextvars

import torch
import torch.nn.functional as F
from transformers.models.jamba import modeling_jamba
from transformers.models.jamba.modeling_jamba import JambaMambaMixer

# The SSM state `[batch, intermediate_size, ssm_state_size]` the running step starts from; None: zeros.
_initial_state: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("jamba_initial_state", default=None)


def _scan_from_state(scan):
    """`scan` (transformers' `mamba_selective_scan`) started from `_initial_state` instead of zeros."""

    def scan_from_state(hidden_states, dt, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        return_last_state=False, **kwargs):
        initial_state = _initial_state.get()
        if initial_state is None:
            return scan(hidden_states, dt, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                        return_last_state=return_last_state, **kwargs)
        # Ungated, so that the term from the initial state joins the output before the gate.
        out, state = scan(hidden_states, dt, A, B, C, D=D, z=None, delta_bias=delta_bias,
                          delta_softplus=delta_softplus, return_last_state=True, **kwargs)
        dt = dt.float() + (delta_bias.float()[:, None] if delta_bias is not None else 0)
        dt = F.softplus(dt) if delta_softplus else dt
        # `[batch, channels, seq_len, state]`: how much of h0 is left after each token, as the scan decays it.
        decay = torch.exp(A.float()[None, :, None, :] * dt.cumsum(dim=-1)[..., None])
        carried = decay * initial_state.float()[:, :, None, :]
        out = out + torch.einsum("bdln,bnl->bdl", carried, C.float()).to(out.dtype)
        state = state + carried[:, :, -1].to(state.dtype)
        if z is not None:
            out = out * F.silu(z)
        return (out, state) if return_last_state else out

    scan_from_state.scan = scan
    return scan_from_state


class PrefixJambaMambaMixer(JambaMambaMixer):
    """transformers' Jamba Mamba layer, continuing multi-token steps from the cached SSM state."""

    def forward(self, hidden_states: torch.Tensor, cache=None, attention_mask=None, **kwargs) -> torch.Tensor:
        state = cache.get_recurrent_state(self.layer_idx) if cache is not None else None
        if state is None or hidden_states.shape[1] == 1:
            return super().forward(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
        # A copy: the layer writes its new state into the cache's tensor in place.
        token = _initial_state.set(state.clone())
        try:
            return super().forward(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
        finally:
            _initial_state.reset(token)


# transformers' forward calls the module-level scan; with no initial state set it is unchanged, so unpatched
# Jamba models in the same process compute exactly what they did.
if not hasattr(modeling_jamba.mamba_selective_scan, "scan"):
    modeling_jamba.mamba_selective_scan = _scan_from_state(modeling_jamba.mamba_selective_scan)

PATCHED_MIXERS = {JambaMambaMixer: PrefixJambaMambaMixer}
