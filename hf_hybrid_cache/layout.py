"""What a model's cache looks like, layer by layer: the shapes, dtypes and devices the store must hold.

Model adapters (see `qwen3_next.py`) build a `ModelLayout`; the store compares layouts to refuse a model
whose cache would not fit the pools it already holds.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionLayerSpec:
    """A full-attention layer: K/V of `[num_kv_heads, num_tokens, head_dim]` per sequence."""

    layer_idx: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device


@dataclass(frozen=True)
class LinearLayerSpec:
    """A Gated-DeltaNet layer: conv state `[conv_dim, conv_width]` (model dtype) and SSM state
    `[num_heads, head_k_dim, head_v_dim]` (fp32, as transformers keeps it) per sequence."""

    layer_idx: int
    conv_dim: int
    conv_width: int
    num_heads: int
    head_k_dim: int
    head_v_dim: int
    dtype: torch.dtype
    device: torch.device


@dataclass(frozen=True)
class ModelLayout:
    """Every cached layer of a model, in layer order within each kind."""

    model_type: str
    num_layers: int
    attention: tuple[AttentionLayerSpec, ...]
    linear: tuple[LinearLayerSpec, ...]

    def describe(self) -> str:
        """One line for error messages."""
        devices = sorted({str(spec.device) for spec in (*self.attention, *self.linear)})
        dtypes = sorted({str(spec.dtype) for spec in (*self.attention, *self.linear)})
        return (
            f"{self.model_type}: {self.num_layers} layers ({len(self.attention)} attention, "
            f"{len(self.linear)} linear), dtype {'/'.join(dtypes)}, device {'/'.join(devices)}"
        )
