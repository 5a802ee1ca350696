"""`StateSlots`: the recurrent layers' states of the requests running in continuous batching, one slot per
request (assigned when it is first scheduled, freed when it finishes, fails or is cancelled)."""

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LinearLayerSpec:
    """One recurrent layer's state: conv `[conv_dim, conv_width]` in the model's dtype and, for a GatedDeltaNet or
    KDA layer, recurrent `[num_v_heads, head_k_dim, head_v_dim]` (a Mamba2 mixer: `[num_heads, head_dim,
    ssm_state_size]`; a Mamba mixer: `[intermediate_size, ssm_state_size]`, Zamba's per head) in fp32, what the
    kernels keep; a short conv has none."""

    conv_shape: tuple[int, int]
    recurrent_shape: tuple[int, ...] | None
    conv_dtype: torch.dtype
    device: torch.device

    @property
    def nbytes(self) -> int:
        conv = self.conv_shape[0] * self.conv_shape[1] * self.conv_dtype.itemsize
        return conv + (0 if self.recurrent_shape is None else math.prod(self.recurrent_shape) * 4)


def linear_layer_specs(model) -> dict[int, LinearLayerSpec]:
    """layer index -> spec, for every one-pass mixer `hhc.patch` swapped in (GatedDeltaNets and KDA layers, Mamba2
    and Mamba mixers, short convs)."""
    from ..models.gated_delta_net import PrefixGatedDeltaNet
    from ..models.mamba import PrefixMambaMixer
    from ..models.mamba2 import PrefixMamba2Mixer
    from ..models.short_conv import PrefixShortConv

    specs = {}
    for module in model.modules():
        if isinstance(module, PrefixGatedDeltaNet):
            weight = module.conv1d.weight
            specs[module.layer_idx] = LinearLayerSpec(
                (weight.shape[0], module.conv_kernel_size), (module.num_v_heads, module.head_k_dim, module.head_v_dim),
                weight.dtype, weight.device,
            )
        elif isinstance(module, PrefixMamba2Mixer):
            weight = module.conv1d.weight
            specs[module.layer_idx] = LinearLayerSpec(
                (weight.shape[0], module.conv_kernel_size), (module.num_heads, module.head_dim, module.ssm_state_size),
                weight.dtype, weight.device,
            )
        elif isinstance(module, PrefixMambaMixer):
            weight = module.conv1d.weight
            specs[module.layer_idx] = LinearLayerSpec(
                (weight.shape[0], module.conv_kernel_size), module.state_shape(1)[1:], weight.dtype, weight.device,
            )
        elif isinstance(module, PrefixShortConv):
            weight = module.conv.weight
            specs[module.layer_idx] = LinearLayerSpec((weight.shape[0], module.conv_kernel_size), None, weight.dtype,
                                                      weight.device)
    return dict(sorted(specs.items()))


class StateSlots:
    """Per layer a conv pool `[num_slots, conv_dim, conv_width]` and, for a GatedDeltaNet, a recurrent pool
    `[num_slots, Hv, K, V]`; a request owns one slot index across all layers. The kernels read and write the
    pools in place (`kernels.causal_conv1d_varlen`, `kernels.gated_delta_rule_varlen`)."""

    def __init__(self, specs: dict[int, LinearLayerSpec], num_slots: int):
        if num_slots < 1:
            raise ValueError(f"continuous batching needs at least one state slot, got {num_slots}; raise max_bytes")
        self.specs = specs
        self.num_slots = num_slots
        self.conv = {i: torch.zeros(num_slots, *s.conv_shape, dtype=s.conv_dtype, device=s.device) for i, s in specs.items()}
        self.recurrent = {i: torch.zeros(num_slots, *s.recurrent_shape, device=s.device)
                          for i, s in specs.items() if s.recurrent_shape is not None}
        self._owner: dict[str, int] = {}  # request id -> slot
        self._free = list(range(num_slots - 1, -1, -1))

    @staticmethod
    def bytes_per_slot(specs: dict[int, LinearLayerSpec]) -> int:
        return sum(spec.nbytes for spec in specs.values())

    def slot(self, request_id: str) -> int | None:
        return self._owner.get(request_id)

    @property
    def num_free(self) -> int:
        return len(self._free)

    def assign(self, request_id: str) -> int | None:
        """The request's slot, taking a free one if it has none; None when every slot is in use."""
        if request_id in self._owner:
            return self._owner[request_id]
        if not self._free:
            return None
        self._owner[request_id] = slot = self._free.pop()
        return slot

    def free(self, request_id: str) -> None:
        slot = self._owner.pop(request_id, None)
        if slot is not None:
            self._free.append(slot)

    def free_all(self) -> None:
        self._owner.clear()
        self._free = list(range(self.num_slots - 1, -1, -1))

    def copy(self, source: int, destination: int) -> None:
        """A fork's state: the parent's slot copied into the child's."""
        for pools in (self.conv, self.recurrent):
            for pool in pools.values():
                pool[destination] = pool[source]

    def read(self, slot: int) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
        """layer -> (conv, recurrent or None) copies of one slot."""
        return {i: (self.conv[i][slot].clone(), self.recurrent[i][slot].clone() if i in self.recurrent else None)
                for i in self.specs}

    def write(self, slot: int, states: dict[int, tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        for i, (conv, recurrent) in states.items():
            self.conv[i][slot] = conv
            if recurrent is not None:
                self.recurrent[i][slot] = recurrent
