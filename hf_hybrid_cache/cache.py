"""`HybridPrefixCache`: the transformers `Cache` a request runs on, restored from and published to a store.

Attention layers keep live K/V like `DynamicLayer`; GDN layers keep the live conv/SSM state like
`LinearAttentionLayer` and also collect the snapshots the patched GDN forward takes at block boundaries.
The lookup before generate and the publish after it are driven by `patching.py`.
"""

import warnings

import torch
from transformers.cache_utils import Cache, DynamicLayer, LinearAttentionLayer

from .adapters import adapter_for
from .hashing import block_keys, model_fingerprint, root_key
from .prefix_store import Hit, PrefixStore, get_default_store


class PrefixAttentionLayer(DynamicLayer):
    """Live K/V of one attention layer, `[batch, num_kv_heads, seq_len, head_dim]`."""

    def restore(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Start from cached K/V, each `[num_kv_heads, num_tokens, head_dim]`."""
        self.keys, self.values = keys.unsqueeze(0), values.unsqueeze(0)
        self.device = keys.device
        self.is_initialized = True


class PrefixLinearAttentionLayer(LinearAttentionLayer):
    """Live state of one GDN layer; counts the tokens it has consumed, so snapshots know their position."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.num_seen_tokens = 0

    def restore(self, conv_state: torch.Tensor, recurrent_state: torch.Tensor, num_tokens: int) -> None:
        """Start from a snapshot: conv `[conv_dim, conv_width]`, SSM `[num_heads, head_k_dim, head_v_dim]`."""
        conv_state, recurrent_state = conv_state.unsqueeze(0), recurrent_state.unsqueeze(0)
        self.lazy_initialization(conv_states=conv_state, recurrent_states=recurrent_state)
        self.conv_states[0].copy_(conv_state)
        self.recurrent_states[0].copy_(recurrent_state)
        self.has_previous_state[0] = True
        self.num_seen_tokens = num_tokens

    def reset(self) -> None:
        super().reset()
        self.num_seen_tokens = 0


class HybridPrefixCache(Cache):
    """A per-request cache for hybrid models that reuses prefixes through a shared `PrefixStore`.

    Pass it to a patched model's `generate(..., past_key_values=cache)` (or `cache=`): generate first
    restores the longest cached prefix (`num_cached_tokens` says how long), computes only the rest, and
    publishes the request's complete blocks when it ends. Hits apply to batch size 1; larger batches run
    exactly like a `DynamicCache` and are neither served nor published.

    Args:
        model: a Qwen3-Next causal LM on which `hf_hybrid_cache.patch(model)` was called.
        store: the `PrefixStore` to share; None means the process-wide store (`get_default_store()`).
        namespace: entries of one namespace never hit from another (tenant isolation).
    """

    def __init__(self, model: torch.nn.Module, store: PrefixStore | None = None, namespace: str | None = None):
        adapter = adapter_for(model)
        if not getattr(model, "_hf_hybrid_cache_patched", False):
            raise ValueError(
                "This model is not patched: call hf_hybrid_cache.patch(model) once before creating a HybridPrefixCache."
            )
        if store is not None and not isinstance(store, PrefixStore):
            raise TypeError(f"store must be a PrefixStore or None, got {type(store).__name__}")
        if namespace is not None and not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str or None, got {type(namespace).__name__}")
        self.store = store if store is not None else get_default_store()
        self.layout = adapter.layout(model)
        self.store.bind(self.layout)
        self.model = model
        self.namespace = namespace
        self._root = root_key(model_fingerprint(model), namespace)
        layers = [
            PrefixLinearAttentionLayer() if layer_type == "linear_attention" else PrefixAttentionLayer()
            for layer_type in model.config.layer_types
        ]
        super().__init__(layers=layers)
        self._linear_positions = {spec.layer_idx: pos for pos, spec in enumerate(self.layout.linear)}
        self.num_cached_tokens = 0
        self._token_ids: torch.Tensor | None = None  # `[seq_len]` the tokens the live state holds (batch 1)
        self._recording = False
        self._in_request = False  # between begin_request and end/abort_request (see `_check_in_request`)
        self._prompt_len = 0
        self._hit: Hit | None = None
        # boundary (tokens) -> per GDN layer position: (conv `[conv_dim, conv_width]`, SSM `[H, K, V]`)
        self._pending: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}

    def __repr__(self) -> str:
        return (
            f"HybridPrefixCache(seq_len={self.get_seq_length()}, num_cached_tokens={self.num_cached_tokens}, "
            f"namespace={self.namespace!r}, store={self.store!r})"
        )

    # -- the GDN forward's side --------------------------------------------------------------------------

    def get_conv_state(self, layer_idx: int, state_idx: int = 0) -> torch.Tensor | None:
        self._check_in_request()
        return super().get_conv_state(layer_idx, state_idx)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        self._check_in_request()
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def _check_in_request(self) -> None:
        # Each forward reads a GDN state or writes K/V before changing anything. Outside our generate
        # (another, unpatched model's generate) the live state would continue another model's sequence.
        if not self._in_request:
            name = getattr(self.model.config, "name_or_path", "") or type(self.model).__name__
            raise RuntimeError(
                f"This HybridPrefixCache was built for {name} and runs only inside that patched model's "
                "generate(..., past_key_values=cache). For another model, create HybridPrefixCache(other_model, store=...)."
            )

    def snapshot_offsets(self, layer_idx: int, seq_len: int) -> list[int]:
        """Offsets in `[1, seq_len]` of the coming step after which layer `layer_idx` must snapshot its state."""
        if not self._recording:
            return []
        past = self.layers[layer_idx].num_seen_tokens
        block_size, mode = self.store.block_size, self.store.mamba_cache_mode
        boundaries = range((past // block_size + 1) * block_size, past + seq_len + 1, block_size)
        if mode == "all":
            return [boundary - past for boundary in boundaries]
        if mode == "align":
            # The state before the final prompt token serves an exact repeat; states at or past the
            # prompt's end serve continuations (the prompt ending on a boundary, and decode steps).
            before_last = [b for b in boundaries if b <= self._prompt_len - 1]
            at_or_after_end = [b for b in boundaries if b >= self._prompt_len]
            return [boundary - past for boundary in before_last[-1:] + at_or_after_end]
        return []

    def record_step(
        self, layer_idx: int, seq_len: int, offsets: list[int], conv_states: torch.Tensor, recurrent_states: torch.Tensor
    ) -> None:
        """Keep the snapshots of one GDN step and advance the layer's token count.

        Args:
            offsets: what `snapshot_offsets` returned for this step.
            conv_states: `[len(offsets), batch, conv_dim, conv_width]`; recurrent_states:
                `[len(offsets), batch, num_heads, head_k_dim, head_v_dim]`, not aliasing the live state.
        """
        layer = self.layers[layer_idx]
        position = self._linear_positions[layer_idx]
        for i, offset in enumerate(offsets):
            self._pending.setdefault(layer.num_seen_tokens + offset, {})[position] = (
                conv_states[i, 0],
                recurrent_states[i, 0],
            )
        layer.num_seen_tokens += seq_len

    # -- the generate side (see patching.py) ---------------------------------------------------------------

    def begin_request(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> None:
        """Before generate: restore the longest cached prefix of `input_ids` `[batch, prompt_len]`."""
        self._in_request = True
        self.num_cached_tokens = 0
        self._pending = {}
        self._recording = False
        if input_ids is None or input_ids.ndim != 2 or input_ids.shape[0] != 1:
            return
        if attention_mask is not None and not bool(attention_mask.all()):
            return  # padded rows shift positions; such requests run uncached
        prompt = input_ids[0]
        self._prompt_len = prompt.shape[0]
        past = self.get_seq_length()
        if past:
            if self._token_ids is None or not torch.equal(prompt[:past].cpu(), self._token_ids[:past].cpu()):
                raise ValueError(
                    "This HybridPrefixCache already holds another sequence than the prompt's first "
                    f"{past} tokens. Use a new HybridPrefixCache for each request (the store shares prefixes)."
                )
        self._recording = self.store.mamba_cache_mode != "none"
        if past or not self._recording:
            return
        # A hit must leave at least one token to compute: the first new token needs logits.
        keys = block_keys(self._root, prompt[: self._prompt_len - 1], self.store.block_size)
        self._hit = self.store.lookup(keys, num_query_tokens=self._prompt_len)
        if self._hit.blocks:
            self._restore(self._hit)

    def _restore(self, hit: Hit) -> None:
        num_tokens = len(hit.blocks) * self.store.block_size
        for spec, (keys, values) in zip(self.layout.attention, self.store.read_pages(hit)):
            self.layers[spec.layer_idx].restore(keys, values)
        states = self.store.read_snapshot(hit)
        for pos, spec in enumerate(self.layout.linear):
            self.layers[spec.layer_idx].restore(states[2 * pos], states[2 * pos + 1], num_tokens)
        self.num_cached_tokens = num_tokens

    def end_request(self, sequences: torch.Tensor | None) -> None:
        """After a successful generate: publish the complete blocks of `sequences` `[batch, total_len]`.

        A failed publish only warns: generate's output is already correct, and the store inserts a block
        only once fully written, so nothing half-made remains.
        """
        try:
            if sequences is not None and sequences.shape[0] == 1:
                self._token_ids = sequences[0, : self.get_seq_length()].detach()
                if self._recording:
                    self._publish(self._token_ids)
        except Exception as error:
            warnings.warn(f"hf_hybrid_cache: publishing to the prefix store failed ({error!r}); output unaffected")
        finally:
            self._close_request()

    def abort_request(self) -> None:
        """After a failed generate: publish nothing and drop the half-updated live state."""
        self._close_request()
        self.reset()

    def _close_request(self) -> None:
        if self._hit is not None:
            self.store.release(self._hit)
            self._hit = None
        self._pending = {}
        self._recording = False
        self._in_request = False

    def _publish(self, token_ids: torch.Tensor) -> None:
        block_size = self.store.block_size
        keys = block_keys(self._root, token_ids, block_size)
        attention_layers = [self.layers[spec.layer_idx] for spec in self.layout.attention]

        def write_page(block_idx: int, views: list[torch.Tensor]) -> None:
            window = slice(block_idx * block_size, (block_idx + 1) * block_size)
            for layer, view in zip(attention_layers, views):
                view[0].copy_(layer.keys[0, :, window])
                view[1].copy_(layer.values[0, :, window])

        def snapshot_writer(states: dict[int, tuple[torch.Tensor, torch.Tensor]]):
            def write(views: list[torch.Tensor]) -> None:
                for pos, (conv_state, recurrent_state) in states.items():
                    views[2 * pos].copy_(conv_state)
                    views[2 * pos + 1].copy_(recurrent_state)

            return write

        num_linear = len(self.layout.linear)
        snapshots = {
            boundary // block_size - 1: snapshot_writer(states)
            for boundary, states in self._pending.items()
            if len(states) == num_linear and boundary <= len(keys) * block_size
        }
        self.store.publish(keys, write_page, snapshots)

    def reset(self) -> None:
        super().reset()
        self._token_ids = None
        self.num_cached_tokens = 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "HybridPrefixCache cannot be cropped: GDN states do not roll back. Start a new HybridPrefixCache; "
            "the store serves the shared prefix."
        )
