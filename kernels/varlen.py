"""Packed variable-length sequences over a pool of state slots (continuous batching): sequence i is the
tokens `cu_seqlens[i]:cu_seqlens[i + 1]` of one packed row, starts from `states[state_indices[i]]` (or
zeros) and leaves its final state there.

Device-agnostic: composed of the per-sequence ops of `dispatch.py` (handed in as `ops`), so CUDA runs the
Triton kernels and the CPU its PyTorch paths. The single-token sequences of a step (decode) run in one batched call over the
gathered slots; every longer sequence (a prompt or a chunk of one) runs the chunked kernels on its own,
with the checkpoint states it asks for. The caller has checked the arguments (`dispatch.py`).
"""

import torch

NO_DT_LIMIT = (0.0, float("inf"))  # the SSD step size unclamped


def split_by_length(cu_seqlens: list[int]) -> tuple[list[int], list[int]]:
    """(sequences of one token, longer sequences), as sequence numbers."""
    lengths = [end - begin for begin, end in zip(cu_seqlens, cu_seqlens[1:])]
    return [i for i, n in enumerate(lengths) if n == 1], [i for i, n in enumerate(lengths) if n > 1]


def _gather(states: torch.Tensor, slots: list[int], fresh: list[bool]) -> torch.Tensor:
    """states[slots] with the rows that start fresh zeroed: `[N, ...]`, a copy."""
    gathered = states[torch.tensor(slots, device=states.device)]
    if any(fresh):
        gathered[torch.tensor(fresh, device=states.device)] = 0
    return gathered


def causal_conv1d_varlen_impl(
    x, weight, bias, cu_seqlens, conv_states, state_indices, has_initial_state, activation, checkpoint_offsets, ops
):
    """See `dispatch.causal_conv1d_varlen`. `ops`: (causal_conv1d, causal_conv1d_update)."""
    conv, conv_update = ops
    out = torch.empty_like(x)
    checkpoints = [None] * len(state_indices)
    decode, prefill = split_by_length(cu_seqlens)
    if decode:
        columns = torch.tensor([cu_seqlens[i] for i in decode], device=x.device)
        slots = [state_indices[i] for i in decode]
        state = _gather(conv_states, slots, [not has_initial_state[i] for i in decode])
        step = x[0, :, columns].T.unsqueeze(-1)  # [N, D, 1]
        out[0, :, columns] = conv_update(step.contiguous(), state, weight, bias, activation=activation).squeeze(-1).T
        conv_states[torch.tensor(slots, device=x.device)] = state
        for n, i in enumerate(decode):
            checkpoints[i] = state[n : n + 1] if checkpoint_offsets[i] else state[:0]
    for i in prefill:
        begin, end, slot = cu_seqlens[i], cu_seqlens[i + 1], state_indices[i]
        initial = conv_states[slot : slot + 1] if has_initial_state[i] else None
        out[:, :, begin:end], final, checkpoints[i] = conv(
            x[:, :, begin:end], weight, bias, conv_state=initial, activation=activation,
            checkpoint_offsets=checkpoint_offsets[i],
        )
        conv_states[slot] = final[0]
        checkpoints[i] = checkpoints[i][:, 0]
    return out, torch.cat(checkpoints) if checkpoints else x.new_empty(0, *conv_states.shape[1:])


def gated_delta_rule_varlen_impl(
    q, k, v, g, beta, cu_seqlens, states, state_indices, has_initial_state, checkpoint_offsets, use_qk_l2norm, scale,
    ops,
):
    """See `dispatch.gated_delta_rule_varlen`. `ops`: (chunk_gated_delta_rule,
    recurrent_gated_delta_rule)."""
    chunk, recurrent = ops
    out = q.new_empty(*q.shape[:2], v.shape[2], v.shape[3])
    checkpoints = [None] * len(state_indices)
    decode, prefill = split_by_length(cu_seqlens)
    if decode:
        rows = torch.tensor([cu_seqlens[i] for i in decode], device=q.device)
        slots = [state_indices[i] for i in decode]
        state = _gather(states, slots, [not has_initial_state[i] for i in decode])
        step = [x[0, rows].unsqueeze(1) for x in (q, k, v, g, beta)]  # [N, 1, ...]
        out[0, rows] = recurrent(*step, state=state, use_qk_l2norm=use_qk_l2norm, scale=scale)[:, 0]
        states[torch.tensor(slots, device=q.device)] = state
        for n, i in enumerate(decode):
            checkpoints[i] = state[n : n + 1] if checkpoint_offsets[i] else state[:0]
    for i in prefill:
        begin, end, slot = cu_seqlens[i], cu_seqlens[i + 1], state_indices[i]
        initial = states[slot : slot + 1] if has_initial_state[i] else None
        out[:, begin:end], final, checkpoints[i] = chunk(
            *(x[:, begin:end] for x in (q, k, v, g, beta)), initial_state=initial,
            checkpoint_offsets=checkpoint_offsets[i], use_qk_l2norm=use_qk_l2norm, scale=scale,
        )
        states[slot] = final[0]
        checkpoints[i] = checkpoints[i][:, 0]
    return out, torch.cat(checkpoints) if checkpoints else states.new_empty(0, *states.shape[1:])



def ssd_varlen_impl(
    x, dt, A, B, C, D, dt_bias, dt_limit, cu_seqlens, states, state_indices, has_initial_state, checkpoint_offsets,
    unclamped, ops,
):
    """See `dispatch.ssd_varlen`. `ops`: (chunk_ssd, recurrent_ssd)."""
    chunk, recurrent = ops
    out = torch.empty_like(x)
    checkpoints = [None] * len(state_indices)
    decode, prefill = split_by_length(cu_seqlens)
    limits = {False: dt_limit, True: NO_DT_LIMIT}  # by `unclamped`
    for free in (False, True):
        rows_of = [i for i in decode if unclamped[i] == free]
        if not rows_of:
            continue
        rows = torch.tensor([cu_seqlens[i] for i in rows_of], device=x.device)
        slots = [state_indices[i] for i in rows_of]
        state = _gather(states, slots, [not has_initial_state[i] for i in rows_of])
        out[0, rows] = recurrent(x[0, rows, None], dt[0, rows, None], A, B[0, rows, None], C[0, rows, None], D=D,
                                 dt_bias=dt_bias, dt_limit=limits[free], state=state)[:, 0]
        states[torch.tensor(slots, device=x.device)] = state
        for n, i in enumerate(rows_of):
            checkpoints[i] = state[n : n + 1] if checkpoint_offsets[i] else state[:0]
    for i in prefill:
        begin, end, slot = cu_seqlens[i], cu_seqlens[i + 1], state_indices[i]
        initial = states[slot : slot + 1] if has_initial_state[i] else None
        out[:, begin:end], final, checkpoints[i] = chunk(
            x[:, begin:end], dt[:, begin:end], A, B[:, begin:end], C[:, begin:end], D=D, dt_bias=dt_bias,
            dt_limit=limits[unclamped[i]], initial_state=initial, checkpoint_offsets=checkpoint_offsets[i],
        )
        states[slot] = final[0]
        checkpoints[i] = checkpoints[i][:, 0]
    return out, torch.cat(checkpoints) if checkpoints else states.new_empty(0, *states.shape[1:])


def selective_scan_varlen_impl(
    x, dt, A, B, C, D, dt_bias, cu_seqlens, states, state_indices, has_initial_state, checkpoint_offsets, ops,
):
    """See `dispatch.selective_scan_varlen`. `ops`: (selective_scan, recurrent_selective_scan)."""
    scan, recurrent = ops
    out = torch.empty_like(x)
    checkpoints = [None] * len(state_indices)
    decode, prefill = split_by_length(cu_seqlens)
    if decode:
        rows = torch.tensor([cu_seqlens[i] for i in decode], device=x.device)
        slots = [state_indices[i] for i in decode]
        state = _gather(states, slots, [not has_initial_state[i] for i in decode])
        step = [t[0, rows, None] for t in (x, dt, B, C)]  # [N, 1, ...]
        out[0, rows] = recurrent(step[0], step[1], A, step[2], step[3], D=D, dt_bias=dt_bias, state=state)[:, 0]
        states[torch.tensor(slots, device=x.device)] = state
        for n, i in enumerate(decode):
            checkpoints[i] = state[n : n + 1] if checkpoint_offsets[i] else state[:0]
    for i in prefill:
        begin, end, slot = cu_seqlens[i], cu_seqlens[i + 1], state_indices[i]
        initial = states[slot : slot + 1] if has_initial_state[i] else None
        out[:, begin:end], final, checkpoints[i] = scan(
            x[:, begin:end], dt[:, begin:end], A, B[:, begin:end], C[:, begin:end], D=D, dt_bias=dt_bias,
            initial_state=initial, checkpoint_offsets=checkpoint_offsets[i],
        )
        states[slot] = final[0]
        checkpoints[i] = checkpoints[i][:, 0]
    return out, torch.cat(checkpoints) if checkpoints else states.new_empty(0, *states.shape[1:])
