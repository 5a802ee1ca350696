"""Zamba's Mamba layer on the one-pass Mamba core (`mamba.py`): its channels in heads, each with its own x_proj and
dt_proj (so B and C per head: one group of the scan per head), the input and the gate interleaved in in_proj's
output, the SSM state cached per head `[batch, heads, head_dim, N]`."""

import torch
from transformers.models.zamba.modeling_zamba import ZambaMambaMixer

from .mamba import PrefixMambaMixer


class PrefixZambaMambaMixer(PrefixMambaMixer, ZambaMambaMixer):
    def split_input(self, projected):
        # in_proj's rows alternate conv input / gate per channel (transformers views them as [..., channels, 2]).
        pairs = projected.unflatten(-1, (self.intermediate_size, 2))
        return pairs[..., 0].transpose(1, 2).contiguous(), pairs[..., 1]

    def selection(self, x):
        heads = x.unflatten(-1, (self.n_mamba_heads, self.mamba_head_dim))  # [batch, seq_len, heads, head_dim]
        parameters = torch.einsum("bthd,hrd->bthr", heads, self.x_proj_weight)
        time_step, B, C = parameters.split([self.time_step_rank, self.ssm_state_size, self.ssm_state_size], dim=-1)
        dt = torch.einsum("bthr,hdr->bthd", time_step, self.dt_proj_weight).flatten(2)
        return dt, B, C

    def scan_parameters(self):
        return (-torch.exp(self.A_log.float()).flatten(0, 1), self.D.flatten(),
                None if self.dt_proj_bias is None else self.dt_proj_bias.flatten())

    def state_shape(self, batch_size):
        return (batch_size, self.n_mamba_heads, self.mamba_head_dim, self.ssm_state_size)


PATCHED_MIXERS = {ZambaMambaMixer: PrefixZambaMambaMixer}
