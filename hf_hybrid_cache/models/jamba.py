"""Jamba's Mamba (v1) layer on the one-pass Mamba core (`mamba.py`).

Where the forward stays transformers' own (autograd, packed training inputs), a fix remains: transformers'
`JambaMambaMixer` reads the cached SSM state only in one-token steps; a longer step runs `mamba_selective_scan`,
which takes no initial state and starts from zeros, so a prompt continued after a restored prefix would differ
from a cold run. The scan is linear in its initial state h0: started from h0, every state gains
`exp(A * cumsum(dt)) * h0` and every output `C . exp(A * cumsum(dt)) * h0`. That term is added around
transformers' own scan, before the output gate.
"""

import contextvars

import torch
import torch.nn.functional as F
from transformers.integrations.accelerate import force_accelerate_hooks
from transformers.models.jamba import modeling_jamba
from transformers.models.jamba.modeling_jamba import JambaMambaMixer

from .mamba import PrefixMambaMixer

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


class PrefixJambaMambaMixer(PrefixMambaMixer, JambaMambaMixer):
    """Jamba's Mamba layer on the one-pass core: dt, B and C from `x_proj`, each RMS-normalised, dt through
    `dt_proj`."""

    # dt_proj's weight is read directly: its accelerate hook fires here (the core fires the conv's).
    forward = force_accelerate_hooks("dt_proj")(PrefixMambaMixer.forward)

    def split_input(self, projected):
        mixed, gate = projected.chunk(2, dim=-1)
        return mixed.transpose(1, 2).contiguous(), gate

    def selection(self, x):
        time_step, B, C = self.x_proj(x).split([self.time_step_rank, self.ssm_state_size, self.ssm_state_size], dim=-1)
        return F.linear(self.dt_layernorm(time_step), self.dt_proj.weight), self.b_layernorm(B), self.c_layernorm(C)

    def scan_parameters(self):
        return -torch.exp(self.A_log.float()), self.D, self.dt_proj.bias

    def forward_on_transformers(self, hidden_states, cache, attention_mask, **kwargs) -> torch.Tensor:
        """transformers' forward, its multi-token scan continuing the cached SSM state."""
        state = cache.get_recurrent_state(self.layer_idx) if cache is not None else None
        if state is None or hidden_states.shape[1] == 1:
            return JambaMambaMixer.forward(self, hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
        # A copy: the layer writes its new state into the cache's tensor in place.
        token = _initial_state.set(state.clone())
        try:
            return JambaMambaMixer.forward(self, hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
        finally:
            _initial_state.reset(token)


# transformers' forward calls the module-level scan; with no initial state set it is unchanged, so unpatched
# Jamba models in the same process compute exactly what they did.
if not hasattr(modeling_jamba.mamba_selective_scan, "scan"):
    modeling_jamba.mamba_selective_scan = _scan_from_state(modeling_jamba.mamba_selective_scan)

PATCHED_MIXERS = {JambaMambaMixer: PrefixJambaMambaMixer}
