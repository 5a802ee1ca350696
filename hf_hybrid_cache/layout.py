"""What a model's cache looks like, layer by layer: the shapes, dtypes and devices the store must hold.

The layout is read off a real cache rather than described per family: `probe_layout` runs the model on one
token with transformers' own `DynamicCache` and records what each cache layer then holds. Any model whose
layer types `cache_utils.DYNAMIC_LAYER_TYPE_MAPPING` knows is described this way, with no family code.

What a layer keeps per token (K/V, and an indexed layer's indexer keys and positions) is paged by block;
what it keeps of fixed size is a state, snapshotted at block boundaries: recurrent and conv states, and a
sliding-window layer's window (the K/V of its last `sliding_window - 1` tokens, which is all such a layer
holds: the tokens before it are gone by the time a request publishes).
"""

from dataclasses import dataclass
from functools import cached_property

import torch
from transformers.cache_utils import (
    DummyLayer,
    DynamicCache,
    DynamicIndexedLayer,
    DynamicLayer,
    DynamicSlidingWindowLayer,
    LinearAttentionAndFullAttentionLayer,
    LinearAttentionAndSlidingWindowAttentionLayer,
    LinearAttentionCacheLayerMixin,
    LinearAttentionLayer,
)

# The cache layer kinds whose whole state is per-token tensors (paged) plus fixed-size states (snapshotted).
SUPPORTED_CACHE_LAYERS = (
    DynamicLayer, DynamicSlidingWindowLayer, DynamicIndexedLayer, LinearAttentionLayer,
    LinearAttentionAndFullAttentionLayer, LinearAttentionAndSlidingWindowAttentionLayer, DummyLayer,
)
# State kinds: a recurrent layer's "conv" and "recurrent" states, a sliding layer's window of keys and values.
WINDOW_KINDS = ("window_keys", "window_values")
# Per-token tensors of an indexed layer beyond its K/V: (attribute, batch axis, token axis) in the live layer.
INDEXED_EXTRAS = (("indexer_keys", 0, 1), ("indexer_position_ids", 1, 2))


@dataclass(frozen=True)
class TensorSpec:
    """One cached tensor of one sequence (no batch dimension)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    @property
    def num_bytes(self) -> int:
        return torch.Size(self.shape).numel() * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class StateSpec:
    """One fixed-size state of a layer: `kind` "conv" or "recurrent" (the layer's `state_idx`), or
    "window_keys" / "window_values" (a sliding layer's last `sliding_window - 1` tokens, `[num_kv_heads,
    sliding_window - 1, head_dim]`, right-aligned while fewer tokens were seen); its tensor."""

    kind: str
    state_idx: int
    tensor: TensorSpec


@dataclass(frozen=True)
class ExtraSpec:
    """A per-token tensor an indexed layer keeps beside its K/V: the layer's attribute `name`, in the live
    layer with the batch at `batch_axis` and the tokens at `token_axis` (the batch comes first); `tensor`:
    one token's part (`indexer_keys` `[index_head_dim]`, `indexer_position_ids` `[position_dims]`)."""

    name: str
    batch_axis: int
    token_axis: int
    tensor: TensorSpec

    @property
    def page_token_axis(self) -> int:
        """Where the tokens are once the batch axis is gone."""
        return self.token_axis - 1

    def page_shape(self, block_size: int) -> tuple[int, ...]:
        """One block of it: the live shape without the batch, `block_size` tokens."""
        shape = list(self.tensor.shape)
        shape.insert(self.page_token_axis, block_size)
        return tuple(shape)


@dataclass(frozen=True)
class LayerSpec:
    """A cached layer. `kv`: one token's keys and values, each `[num_kv_heads, head_dim]` (their shapes may
    differ: latent attention), or None; `states`: the fixed-size states it carries (conv `[conv_dim,
    conv_width]`, SSM `[...]`, a sliding window's keys and values), maybe none; `extras`: per-token tensors
    of an indexed layer beyond its K/V."""

    layer_idx: int
    kv: tuple[TensorSpec, TensorSpec] | None
    states: tuple[StateSpec, ...]
    extras: tuple[ExtraSpec, ...] = ()


@dataclass(frozen=True)
class ModelLayout:
    """Every cached layer of a model, in layer order (layers without a cache, such as MLP-only ones, omitted)."""

    model_type: str
    num_layers: int
    layers: tuple[LayerSpec, ...]

    @cached_property  # the layout is frozen; the cache, hooks and store read these on every step
    def attention(self) -> tuple[LayerSpec, ...]:
        """Layers with K/V, whose pages a block holds."""
        return tuple(layer for layer in self.layers if layer.kv is not None)

    @cached_property
    def recurrent(self) -> tuple[LayerSpec, ...]:
        """Layers with fixed-size states (recurrent, conv, sliding windows), whose snapshots a block may hold."""
        return tuple(layer for layer in self.layers if layer.states)

    @cached_property
    def state_specs(self) -> tuple[StateSpec, ...]:
        """Every recurrent state of the model, in the order snapshots store them."""
        return tuple(state for layer in self.recurrent for state in layer.states)

    def to_dict(self) -> dict:
        """JSON-ready description (dtypes and devices as strings), read back by `from_dict`."""

        def tensor(spec: TensorSpec) -> list:
            return [list(spec.shape), str(spec.dtype).removeprefix("torch."), str(spec.device)]

        layers = []
        for layer in self.layers:
            described = dict(
                layer_idx=layer.layer_idx,
                kv=[tensor(spec) for spec in layer.kv] if layer.kv else None,
                states=[[state.kind, state.state_idx, tensor(state.tensor)] for state in layer.states],
            )
            if layer.extras:  # absent otherwise, as in files written before indexed layers were paged
                described["extras"] = [[e.name, e.batch_axis, e.token_axis, tensor(e.tensor)] for e in layer.extras]
            layers.append(described)
        return dict(model_type=self.model_type, num_layers=self.num_layers, layers=layers)

    @classmethod
    def from_dict(cls, data: dict, device: str | torch.device | None = None) -> "ModelLayout":
        """The layout `to_dict` described; every tensor on `device` if given. Raises ValueError, KeyError or
        TypeError on anything else."""

        def tensor(item) -> TensorSpec:
            shape, dtype_name, saved_device = item
            dtype = getattr(torch, dtype_name, None)
            if not isinstance(dtype, torch.dtype) or not all(isinstance(size, int) and size > 0 for size in shape):
                raise ValueError(f"not a tensor description: {item!r}")
            return TensorSpec(tuple(shape), dtype, torch.device(device if device is not None else saved_device))

        layers = tuple(
            LayerSpec(
                layer_idx=int(layer["layer_idx"]),
                kv=tuple(tensor(item) for item in layer["kv"]) if layer["kv"] is not None else None,
                states=tuple(StateSpec(str(kind), int(state_idx), tensor(item)) for kind, state_idx, item in layer["states"]),
                extras=tuple(
                    ExtraSpec(str(name), int(batch_axis), int(token_axis), tensor(item))
                    for name, batch_axis, token_axis, item in layer.get("extras", ())
                ),
            )
            for layer in data["layers"]
        )
        return cls(model_type=str(data["model_type"]), num_layers=int(data["num_layers"]), layers=layers)

    def describe(self) -> str:
        """One line for error messages."""
        specs = [spec for layer in self.attention for spec in layer.kv] + [state.tensor for state in self.state_specs]
        devices = sorted({str(spec.device) for spec in specs})
        dtypes = sorted({str(spec.dtype) for spec in specs})
        return (
            f"{self.model_type}: {self.num_layers} layers ({len(self.attention)} with K/V, "
            f"{len(self.recurrent)} recurrent), dtype {'/'.join(dtypes)}, device {'/'.join(devices)}"
        )


def model_layout(model: torch.nn.Module, params: list[torch.Tensor] | None = None) -> ModelLayout:
    """`probe_layout(model)`, probed again only when a parameter changed dtype or device since the last call.
    `params`: `list(model.parameters())` when the caller has it already.

    Raises ValueError for a model whose weights are not loaded (on the meta device).
    """
    params = list(model.parameters()) if params is None else params
    placement = tuple((param.dtype, param.device) for param in params)
    if any(device.type == "meta" for _, device in placement):
        raise ValueError(
            f"{type(model).__name__} has parameters on the meta device (not loaded): load the weights (or "
            "materialize them with model.to_empty(...) and initialise) before creating a HybridPrefixCache."
        )
    memo = getattr(model, "_hf_hybrid_cache_layout", None)
    if memo is None or memo[0] != placement:
        memo = (placement, probe_layout(model))
        model._hf_hybrid_cache_layout = memo
    return memo[1]


def probe_layout(model: torch.nn.Module) -> ModelLayout:
    """Run `model` on one token with a `DynamicCache` and describe what each cache layer holds.

    Runs without gradients, in eval mode (gradient checkpointing would turn the cache off) and with the
    random number generators forked, so the model and its RNG streams are left exactly as they were.
    """
    text_config = model.config.get_text_config(decoder=True)
    cache = DynamicCache(config=model.config)
    embeddings = model.get_input_embeddings()
    token = torch.zeros((1, 1), dtype=torch.long, device=embeddings.weight.device)
    training = [(module, module.training) for module in model.modules()]
    cuda_devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=cuda_devices):
            model(input_ids=token, cache=cache, use_cache=True)
    finally:
        for module, was_training in training:
            module.training = was_training
    layers = [_layer_spec(layer_idx, layer) for layer_idx, layer in enumerate(cache.layers)]
    return ModelLayout(
        model_type=text_config.model_type,
        num_layers=len(cache.layers),
        layers=tuple(spec for spec in layers if spec is not None),
    )


def _layer_spec(layer_idx: int, layer) -> LayerSpec | None:
    kv, states, extras = None, [], []
    holds_kv = isinstance(layer, DynamicLayer) and getattr(layer, "keys", None) is not None and layer.keys.numel()
    if holds_kv and getattr(layer, "is_sliding", False):
        window = layer.sliding_window - 1
        for kind, tensor in zip(WINDOW_KINDS, (layer.keys, layer.values)):
            shape = (tensor.shape[1], window, tensor.shape[3])  # `[num_kv_heads, window, head_dim]`
            states.append(StateSpec(kind, 0, TensorSpec(shape, tensor.dtype, tensor.device)))
    elif holds_kv:
        kv = tuple(TensorSpec(tuple(x.shape), x.dtype, x.device) for x in (layer.keys[0, :, 0], layer.values[0, :, 0]))
    if isinstance(layer, DynamicIndexedLayer):
        for name, batch_axis, token_axis in INDEXED_EXTRAS:
            tensor = getattr(layer, name, None)
            if tensor is not None and tensor.numel():
                one_token = tensor.select(token_axis, 0).select(batch_axis, 0)
                extras.append(ExtraSpec(name, batch_axis, token_axis, TensorSpec(tuple(one_token.shape), tensor.dtype, tensor.device)))
    if isinstance(layer, LinearAttentionCacheLayerMixin):
        if all(tensor is None for tensor in (*layer.conv_states, *layer.recurrent_states)):
            raise ValueError(
                f"layer {layer_idx} is a recurrent layer whose cache stayed empty after a forward: the model keeps "
                "that state elsewhere (on its modules), where a prefix cache cannot save or restore it."
            )
        for state_idx in range(layer.number_of_states):
            for kind, tensors in (("conv", layer.conv_states), ("recurrent", layer.recurrent_states)):
                tensor = tensors[state_idx]
                if tensor is not None:
                    states.append(StateSpec(kind, state_idx, TensorSpec(tuple(tensor.shape[1:]), tensor.dtype, tensor.device)))
    if kv is None and not states:
        return None
    return LayerSpec(layer_idx, kv, tuple(states), tuple(extras))
