"""What the one-pass mixers share (`gated_delta_net.py`, `short_conv.py`, `mamba2.py`): they hand a
`HybridPrefixCache` their states at the block boundaries inside a step, so that a prefill saves every boundary it
needs in one forward, and they leave to transformers' own forward what our kernels do not run."""

from collections.abc import Callable

import torch

from .. import kernels, seams


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


def zero_padding(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The 2D padding mask (left padding) applied as transformers' recurrent mixers apply it: padded positions enter
    the conv and the scan as zeros."""
    if attention_mask is None:
        return hidden_states
    return (hidden_states * attention_mask[:, :, None]).to(hidden_states.dtype)


def cached_causal_conv(module, mixed: torch.Tensor, cache, offsets: list[int], decoding: bool, activation):
    """The layer's causal conv (`module.conv1d` or `module.conv`) over one step, continuing the cache's conv state.

    Args:
        mixed: the conv's input `[batch, conv_dim, seq_len]`.
        offsets: where the step's boundaries are (`HybridPrefixCache.snapshot_offsets`).
        decoding: a one-token step on a cache holding the layer's state: run in place.

    Returns:
        the conv's output `[batch, conv_dim, seq_len]` and the conv states at `offsets` `[len(offsets), batch,
        conv_dim, conv_width]` (None when decoding).
    """
    conv = module.conv1d if hasattr(module, "conv1d") else module.conv
    weight = conv.weight.squeeze(1)
    conv_state = cache.get_conv_state(module.layer_idx) if cache is not None else None
    if decoding:
        out = kernels.causal_conv1d_update(mixed, conv_state, weight, conv.bias, activation=activation)
        seams.count_unseen_tokens(cache, module.layer_idx, 1)
        return out, None
    out, _, checkpoints = kernels.causal_conv1d(
        mixed, weight, conv.bias, conv_state=conv_state, activation=activation, checkpoint_offsets=offsets
    )
    if cache is not None:
        # The cache keeps the last conv_kernel_size inputs; handing it only those avoids a copy of the whole
        # step in `update_conv_state`'s concatenation.
        handed = mixed[..., -module.conv_kernel_size :]
        cache.update_conv_state(handed, module.layer_idx, conv_kernel_size=module.conv_kernel_size)
        seams.count_unseen_tokens(cache, module.layer_idx, mixed.shape[-1] - handed.shape[-1])
    return out, checkpoints


def scan_and_record(recorder, layer_idx: int, scan: Callable, seq_len: int, initial_state, offsets: list[int],
                    conv_checkpoints: torch.Tensor):
    """A recurrent scan over the step, handing the recorder the states at `offsets`, in segments of at most
    `recorder.max_offsets_per_call` checkpoints each, so that the states computed but not yet in their slots never
    exceed one snapshot's worth however long the step.

    Args:
        scan: `scan(begin, end, state, offsets)` -> (output of tokens begin..end, state after them, the states
            after `offsets` counted from begin), as the chunked kernels return them.
        conv_checkpoints: `[len(offsets), batch, conv_dim, conv_width]`.

    Returns:
        the output over the whole step (concatenated along dim 1) and the final state.
    """
    limit = recorder.max_offsets_per_call
    outputs, state, begin = [], initial_state, 0
    for first in range(0, len(offsets), limit):
        group = offsets[first : first + limit]
        end = group[-1] if first + limit < len(offsets) else seq_len
        out, state, checkpoints = scan(begin, end, state, [offset - begin for offset in group])
        recorder.record_states(layer_idx, group, conv_checkpoints[first : first + limit], checkpoints)
        outputs.append(out)
        begin = end
    return (outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)), state
