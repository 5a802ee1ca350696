"""`HybridPrefixCache`: the transformers `Cache` a request runs on, restored from and published to a store.

Its layers are transformers' own, built from `config.layer_types` exactly as `DynamicCache` builds them;
this class adds the request's bookkeeping: the position of the live state, the recurrent-state snapshots
taken at block boundaries (inside a one-pass forward, or at the end of a step) and written straight into
store slots reserved for them, the restore of a hit and the publish of the request's blocks. When each
happens is `request.py`'s decision.
"""

import copy
import warnings

import torch
from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING, Cache, get_layer_types_and_kwargs

from .integrations.display import html_table, store_rows
from . import seams
from .layout import WINDOW_KINDS, model_layout
from .models.keying import TEXT, PromptKeying
from .models.wrappers import unwrap
from .rollback import DraftRollback, rollback_refusal
from .rows import bind_row, stack_layers
from .store.fingerprint import model_fingerprint
from .store.hashing import block_keys, root_key
from .store.modes import saved_boundaries
from .store.prefix_store import Hit, PrefixStore, get_default_store


class HybridPrefixCache(Cache):
    """A per-request cache that reuses prompt prefixes through a shared `PrefixStore`.

    Pass it to a patched model's `generate(..., past_key_values=cache)` (or `cache=`): generate first
    restores the longest cached prefix (`num_cached_tokens` says how long), computes only the rest, and
    publishes the request's complete blocks when it ends. In a batch (left padded; repeated prompts,
    `num_return_sequences` and beams included) each row is served and published on its own (`batch.py`):
    `cached_tokens_per_row` says how many of each row's prompt tokens were not computed.

    Args:
        model: a model with `generate` (or a peft or `torch.compile` wrapper of one) on which
            `hf_hybrid_cache.patch(model)` was called.
        store: the `PrefixStore` to share; None means the process-wide store (`get_default_store()`).
        namespace: entries of one namespace never hit from another (tenant isolation).
    """

    def __init__(self, model: torch.nn.Module, store: PrefixStore | None = None, namespace: str | None = None):
        model = unwrap(model)  # a peft or torch.compile wrapper: the model inside it
        if not getattr(model, "_hf_hybrid_cache_patched", False):
            raise ValueError(
                "This model is not patched: call hf_hybrid_cache.patch(model) once before creating a HybridPrefixCache."
            )
        if not hasattr(model, "_hf_hybrid_cache_path"):
            raise ValueError(
                f"{type(model).__name__} has no generate(): HybridPrefixCache serves generate() of a causal LM "
                "(for example ...ForCausalLM or ...ForConditionalGeneration)."
            )
        if store is not None and not isinstance(store, PrefixStore):
            raise TypeError(f"store must be a PrefixStore or None, got {type(store).__name__}")
        if namespace is not None and not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str or None, got {type(namespace).__name__}")
        self.store = store if store is not None else get_default_store()
        params = list(model.parameters())  # one walk of the module tree for both checks
        self.layout = model_layout(model, params)
        fingerprint = model_fingerprint(model, params)
        self.store.bind(self.layout, fingerprint)
        self.model = model
        self.namespace = namespace
        self._fingerprint = fingerprint
        self._root = root_key(fingerprint, namespace)  # with the model state of each request: `begin_request`
        super().__init__(layers=self._new_layers())
        # (layer_idx, kind, state_idx) -> position in a snapshot (`layout.state_specs` order)
        state_keys = [(layer.layer_idx, state.kind, state.state_idx) for layer in self.layout.recurrent for state in layer.states]
        self._state_positions = {key: pos for pos, key in enumerate(state_keys)}
        # Sliding layers, whose windows are taken inside a step as their K/V goes by (`update`).
        self._window_layers = {layer_idx for layer_idx, kind, _ in state_keys if kind == WINDOW_KINDS[0]}
        self.num_cached_tokens = 0
        self.num_seen_tokens = 0  # tokens the live state holds
        self._token_ids: torch.Tensor | None = None  # `[num_seen_tokens]` the tokens it holds (batch 1)
        self._recording = False
        self._in_request = False  # between begin_request and end/abort_request (see `_check_in_request`)
        self._stepped = False  # a step of the current request has ended (`in_prompt_step`)
        self._prompt_len = 0
        self._block_extras: dict[int, bytes] = {}  # block index -> digests of the images in it
        self._hit: Hit | None = None
        self._branch_point = 0  # branch mode: where the prompt leaves the longest cached path (tokens)
        self._num_stored_blocks = 0  # leading blocks of the prompt the store held at lookup
        # boundary (tokens) -> [reserved store slot, number of states written into it so far]
        self._pending: dict[int, list[int]] = {}
        self._refused: set[int] = set()  # boundaries the store had no room for
        self._decode_boundary: int | None = None  # branch mode: the one boundary past the prompt kept
        self._shared_boundaries: set[int] = set()  # where the prompt parts from another of its batch
        # A batched request (`batch.py`): a row cache per row and the column its tokens start at.
        self._rows: list[HybridPrefixCache] = []
        self._row_offsets: list[int] = []
        self.cached_tokens_per_row: list[int] = []  # a batched request's `num_cached_tokens`, per row
        # Assisted decoding (`rollback.py`): the states a verification forward kept for `crop`, and the offsets
        # of the current step that are saved boundaries (the others it records are for the rollback).
        self._rollback: DraftRollback | None = None
        self._step_boundaries: set[int] = set()

    def _new_layers(self) -> list:
        """Empty cache layers of transformers' own classes, as `DynamicCache` builds them for the model."""
        layer_types, layer_kwargs = get_layer_types_and_kwargs(self.model.config.get_text_config(decoder=True))
        return [DYNAMIC_LAYER_TYPE_MAPPING[kind](**kwargs) for kind, kwargs in zip(layer_types, layer_kwargs)]

    def __repr__(self) -> str:
        return (
            f"HybridPrefixCache(seq_len={self.num_seen_tokens}, num_cached_tokens={self.num_cached_tokens}, "
            f"namespace={self.namespace!r}, store={self.store!r})"
        )

    def _repr_html_(self) -> str:
        rows = [
            ("tokens held", self.num_seen_tokens),
            ("prompt tokens served from the store", self.num_cached_tokens),
            ("namespace", self.namespace),
        ]
        return html_table("HybridPrefixCache", rows + store_rows(self.store.stats()))

    # -- the model's side --------------------------------------------------------------------------------

    def get_conv_state(self, layer_idx: int, state_idx: int = 0) -> torch.Tensor | None:
        self._check_in_request()
        return super().get_conv_state(layer_idx, state_idx)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        self._check_in_request()
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if self._recording and layer_idx in self._window_layers:
            self._record_windows(layer_idx, keys, values, key_states.shape[-2])
        return keys, values

    def _record_windows(self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor, seq_len: int) -> None:
        """A sliding layer's window at each saved boundary strictly inside the current step, taken from the
        keys and values the layer attends over (`[batch, num_kv_heads, tokens, head_dim]`, ending with this
        step's): by the step's end, the window has moved past those boundaries."""
        start = self.num_seen_tokens
        first = start + seq_len - keys.shape[-2]  # the token the returned keys start at
        positions = [self._state_positions[(layer_idx, kind, 0)] for kind in WINDOW_KINDS]
        for boundary in self.saved_boundaries(start, start + seq_len - 1):
            slot_id = self._slot(boundary)
            if slot_id is None:
                continue
            views = self.store.snapshot_views(slot_id)
            for pos, tensor in zip(positions, (keys, values)):
                width = min(boundary, views[pos].shape[1])
                views[pos][:, -width:].copy_(tensor[0, :, boundary - first - width : boundary - first])
            self._pending[boundary][1] += len(positions)

    @property
    def prompt_length(self) -> int:
        """Tokens of the prompt of the request running (batch 1), 0 outside one."""
        return self._prompt_len if self._in_request else 0

    def _check_in_request(self) -> None:
        # Each forward reads a recurrent state or writes K/V before changing anything. Outside our generate (a
        # plain forward, or another model's generate) the live state would continue a sequence nobody tracks.
        if not self._in_request:
            name = getattr(self.model.config, "name_or_path", "") or type(self.model).__name__
            raise RuntimeError(
                f"This HybridPrefixCache (built for {name}) runs only inside that patched model's "
                "generate(..., cache=cache). For a plain forward (model(...), a hand-written loop) pass a "
                "transformers DynamicCache(config=model.config) instead; for another model's generate, create "
                "HybridPrefixCache(other_model, store=...)."
            )

    def snapshot_offsets(self, layer_idx: int, seq_len: int) -> list[int]:
        """Offsets in `[1, seq_len)` of the coming step after which a one-pass layer must hand over its state:
        the saved boundaries inside the step and, under assisted decoding, its last positions (`rollback.py`).

        The state at the step's end is taken for every layer by `end_step`; only boundaries strictly inside
        a step need the one-pass kernels.
        """
        start = self.num_seen_tokens
        boundaries = self.saved_boundaries(start, start + seq_len - 1) if self._recording else []
        self._step_boundaries = {boundary - start for boundary in boundaries}
        offsets = set(self._step_boundaries)
        if self._rollback is not None:
            if self._rollback.step_start != start:  # the step's first layer: the previous step's states go
                self._rollback.begin_step(start, seq_len)
            offsets.update(self._rollback.offsets(seq_len))
        return sorted(offsets)

    @property
    def max_offsets_per_call(self) -> int:
        """How many states one one-pass layer may compute in one kernel call: with two per recurrent layer,
        the states alive before they reach their slots stay within two snapshots' worth, however long the
        prompt (a longer step is run in segments)."""
        return max(1, 2 * len(self.layout.recurrent))

    def record_states(
        self, layer_idx: int, offsets: list[int], conv_states: torch.Tensor, recurrent_states: torch.Tensor | None
    ) -> None:
        """Write the states a one-pass layer computed inside the current step into their boundaries' slots.

        Args:
            offsets: some of what `snapshot_offsets` returned for this step.
            conv_states: `[len(offsets), batch, conv_dim, conv_width]`; recurrent_states:
                `[len(offsets), batch, num_heads, head_k_dim, head_v_dim]`, or None for a layer that holds a conv
                state only (a short conv).
        """
        positions = [self._state_positions[(layer_idx, "conv", 0)]]
        if recurrent_states is not None:
            positions.append(self._state_positions[(layer_idx, "recurrent", 0)])
        for i, offset in enumerate(offsets):
            states = (conv_states[i],) if recurrent_states is None else (conv_states[i], recurrent_states[i])
            if self._rollback is not None:
                self._rollback.keep(layer_idx, offset, states)
            if offset not in self._step_boundaries:
                continue
            boundary = self.num_seen_tokens + offset
            slot_id = self._slot(boundary)
            if slot_id is None:
                continue
            views = self.store.snapshot_views(slot_id)
            for pos, state in zip(positions, states):
                views[pos].copy_(state[0])
            self._pending[boundary][1] += len(positions)

    def in_prompt_step(self) -> bool:
        """Whether the step running now is the request's first, whose tokens are all prompt tokens (the rest of
        the prompt after a hit, even a single token): generate computes the whole uncached prompt in one step."""
        return self._in_request and not self._stepped

    def end_step(self, seq_len: int) -> None:
        """After each forward of the model: advance the position, and snapshot every recurrent state if the
        step ended on a boundary this request saves (each row's own, in a batch)."""
        self._stepped = True
        if self._rows:
            self._end_rows_step(seq_len)
            return
        start, self.num_seen_tokens = self.num_seen_tokens, self.num_seen_tokens + seq_len
        boundary = self.num_seen_tokens
        if not self._recording or self.saved_boundaries(start, boundary)[-1:] != [boundary]:
            return
        if self.store.mamba_cache_mode == "branch" and boundary >= self._prompt_len:
            # Only the latest boundary past the prompt serves the next turn: it takes the previous one's slot.
            previous = self._decode_boundary
            last_before_final = (self._prompt_len - 1) // self.store.block_size * self.store.block_size
            if previous not in self._pending and last_before_final in self._pending and last_before_final != self._branch_point:
                # Under memory pressure, this request's own state before its final token, which the new one
                # supersedes on the same path, gives way before anything of another request is evicted.
                num_new_pages = max(0, boundary // self.store.block_size - self._num_stored_blocks)
                if not self.store.has_room(1, num_new_pages):
                    previous = last_before_final
            if previous in self._pending:
                self._pending[boundary] = self._pending.pop(previous)
            self._decode_boundary = boundary
        slot_id = self._slot(boundary)
        if slot_id is None:
            return
        for view, state in zip(self.store.snapshot_views(slot_id), self._live_states()):
            if view.shape != state.shape:  # a window that has seen fewer tokens than it holds: right-aligned
                view = view[:, -state.shape[1] :]
            view.copy_(state)
        self._pending[boundary][1] = len(self._state_positions)

    def _slot(self, boundary: int) -> int | None:
        """The store slot this request writes the state at `boundary` into, reserved on first use; None when
        the store has no room (saving stops there, outputs are unaffected)."""
        if boundary in self._pending:
            return self._pending[boundary][0]
        if boundary in self._refused:
            return None
        num_new_pages = max(0, boundary // self.store.block_size - self._num_stored_blocks)
        slot_id = self.store.reserve_snapshot(num_new_pages)
        if slot_id is None:
            self._refused.add(boundary)
            return None
        self._pending[boundary] = [slot_id, 0]
        return slot_id

    def saved_boundaries(self, start: int, end: int) -> list[int]:
        """The boundaries b, start < b <= end, this request saves states at (for the prompt it runs)."""
        if not self.store.needs_snapshots:
            return []
        store = self.store
        boundaries = saved_boundaries(store.mamba_cache_mode, store.block_size, self._prompt_len, start, end, self._branch_point)
        if store.mamba_cache_mode == "none" or not self._shared_boundaries:
            return boundaries
        return sorted({*boundaries, *(b for b in self._shared_boundaries if start < b <= end)})

    def _live_states(self) -> list[torch.Tensor]:
        """Every state of sequence 0, in `layout.state_specs` order (views of the live state). A sliding
        window holds fewer than `sliding_window - 1` tokens until that many were seen: its slot is filled
        from the right."""
        states = []
        for layer_spec in self.layout.recurrent:
            layer = self.layers[layer_spec.layer_idx]
            for state in layer_spec.states:
                if state.kind in WINDOW_KINDS:
                    states.append((layer.keys if state.kind == "window_keys" else layer.values)[0])
                    continue
                tensors = layer.conv_states if state.kind == "conv" else layer.recurrent_states
                states.append(tensors[state.state_idx][0])
        return states

    # -- the request's side (see request.py) ---------------------------------------------------------------

    def begin_request(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        keying: PromptKeying | None = TEXT,
        shared_boundaries: set[int] | None = None,
    ) -> None:
        """Before generate: restore the longest cached prefix of `input_ids` `[batch, prompt_len]`.

        `keying`: what the block keys digest beyond token ids and where a hit may end (`models/keying.py`);
        None: the keys cannot see all of the request's inputs, so nothing is looked up or published.
        `shared_boundaries`: more boundaries to save states at (where other rows of a batch part from it).
        """
        self._in_request = True
        self._stepped = False
        self.num_cached_tokens = 0
        self._pending, self._refused, self._decode_boundary, self._branch_point = {}, set(), None, 0
        self._shared_boundaries = shared_boundaries or set()
        self._num_stored_blocks = 0
        self._recording = False
        if keying is None or input_ids is None or input_ids.ndim != 2 or input_ids.shape[0] != 1:
            return
        if attention_mask is not None and not bool(attention_mask.all()):
            return  # padded rows shift positions; such requests run uncached
        prompt = input_ids[0]
        self._prompt_len = prompt.shape[0]
        past = self.num_seen_tokens
        if past:
            if self._token_ids is None or not torch.equal(prompt[:past].cpu(), self._token_ids[:past].cpu()):
                raise ValueError(
                    "This HybridPrefixCache already holds another sequence than the prompt's first "
                    f"{past} tokens. Use a new HybridPrefixCache for each request (the store shares prefixes)."
                )
        # A model without recurrent layers hits at every block whatever the mode.
        self._recording = self.store.mamba_cache_mode != "none" or not self.store.needs_snapshots
        self._root = root_key(self._fingerprint, self.namespace, keying.model_state)
        self._block_extras = keying.block_extras(self.store.block_size)
        if past or not self._recording:
            return
        # A hit must leave at least one token to compute: the first new token needs logits.
        keys = block_keys(self._root, prompt[: self._prompt_len - 1], self.store.block_size, self._block_extras)
        ends = keying.may_end_after(self.store.block_size, len(keys))
        self._hit = self.store.lookup(keys, num_query_tokens=self._prompt_len, may_end_after=ends)
        if self._hit.blocks:
            self._restore(self._hit)
        self._num_stored_blocks = self._hit.num_matched
        if self.store.mamba_cache_mode == "branch":
            self._branch_point = self._hit.num_matched * self.store.block_size

    def prefill_boundaries(self) -> list[int]:
        """The saved boundaries before the final prompt token not yet reached: where the generic path splits
        its prefill (it has no kernels to take states inside a forward)."""
        if not self._recording:
            return []
        return self.saved_boundaries(self.num_seen_tokens, self._prompt_len - 1)

    def _restore(self, hit: Hit) -> None:
        num_tokens = len(hit.blocks) * self.store.block_size
        for layer_spec, (keys, values, *extras) in zip(self.layout.attention, self.store.read_pages(hit)):
            layer = self.layers[layer_spec.layer_idx]
            layer.lazy_initialization(keys[None], values[None])
            layer.keys, layer.values = keys[None], values[None]
            for extra, tensor in zip(layer_spec.extras, extras):
                if extra.name == "indexer_keys":
                    layer.lazy_initialization_indexer(tensor.unsqueeze(extra.batch_axis))
                setattr(layer, extra.name, tensor.unsqueeze(extra.batch_axis))
        snapshot = iter(self.store.read_snapshot(hit)) if self.store.needs_snapshots else iter(())
        for layer_spec in self.layout.recurrent:
            layer = self.layers[layer_spec.layer_idx]
            for state in layer_spec.states:
                saved = next(snapshot)[None]
                if state.kind in WINDOW_KINDS:
                    # The layer's own tensors from here on (its next update concatenates to them).
                    window = saved[:, :, -min(num_tokens, saved.shape[2]) :].clone()
                    if state.kind == "window_keys":
                        layer.lazy_initialization(window, window)
                        layer.keys = window
                    else:
                        layer.values = window
                    layer.cumulative_length = num_tokens
                    continue
                layer.lazy_initialization(**{f"{state.kind}_states": saved}, state_idx=state.state_idx)
                tensors = layer.conv_states if state.kind == "conv" else layer.recurrent_states
                tensors[state.state_idx].copy_(saved)
                layer.has_previous_state[state.state_idx] = True
            seams.set_token_count(layer, num_tokens)
        self.num_seen_tokens = self.num_cached_tokens = num_tokens

    def end_request(self, sequences: torch.Tensor | None) -> None:
        """After a successful generate: publish the complete blocks of `sequences` `[batch, total_len]`.

        A failed publish only warns: generate's output is already correct, and the store inserts a block
        only once fully written, so nothing half-made remains.
        """
        try:
            if sequences is not None and sequences.shape[0] == 1:
                self._token_ids = sequences[0, : self.num_seen_tokens].detach()
                if self._recording:
                    self._publish(self._token_ids)
        except Exception as error:
            warnings.warn(f"hf_hybrid_cache: publishing to the prefix store failed ({error!r}); output unaffected")
        finally:
            self._close_request()

    def abort_request(self) -> None:
        """After a failed generate: publish nothing and drop the half-updated live state."""
        rows, self._rows = self._rows, []
        for row in rows:
            row.abort_request()
        self._close_request()
        self.reset()

    def _close_request(self) -> None:
        if self._hit is not None:
            self.store.release(self._hit)
            self._hit = None
        pending, self._pending = self._pending, {}
        self.store.release_snapshots(slot_id for slot_id, _ in pending.values())
        self._recording = False
        self._in_request = False
        self._rollback = None

    def _publish(self, token_ids: torch.Tensor) -> None:
        block_size = self.store.block_size
        keys = block_keys(self._root, token_ids, block_size, self._block_extras)
        attention_layers = [self.layers[spec.layer_idx] for spec in self.layout.attention]

        def write_page(block_idx: int, views: list[torch.Tensor]) -> None:
            views = iter(views)  # `store.page_specs` order: per attention layer, keys, values, extras
            start = block_idx * block_size
            for spec, layer in zip(self.layout.attention, attention_layers):
                next(views).copy_(layer.keys[0, :, start : start + block_size])
                next(views).copy_(layer.values[0, :, start : start + block_size])
                for extra in spec.extras:
                    live = getattr(layer, extra.name).select(extra.batch_axis, 0)
                    next(views).copy_(live.narrow(extra.page_token_axis, start, block_size))

        # Complete snapshots of published blocks go to the store with them; the others go back now.
        complete = {
            boundary: slot_id
            for boundary, (slot_id, num_written) in self._pending.items()
            if num_written == len(self._state_positions) and boundary <= len(keys) * block_size
        }
        pending, self._pending = self._pending, {}
        self.store.release_snapshots(slot_id for boundary, (slot_id, _) in pending.items() if boundary not in complete)
        self.store.publish(keys, write_page, {boundary // block_size - 1: slot_id for boundary, slot_id in complete.items()})

    # -- batches (see batch.py) -----------------------------------------------------------------------------

    def new_row(self) -> "HybridPrefixCache":
        """A new batch-1 cache of the same model, store and namespace, for one row of a batch."""
        row = copy.copy(self)  # the layout, fingerprint and store are shared; the rest is made anew
        row.layers = self._new_layers()
        row._pending, row._refused, row._shared_boundaries, row._hit = {}, set(), set(), None
        row._rows, row._row_offsets, row.cached_tokens_per_row = [], [], []
        row._token_ids, row.num_seen_tokens, row.num_cached_tokens = None, 0, 0
        return row

    def fork(self) -> "HybridPrefixCache":
        """Another row with this row's prompt, served by this row's computation (repeated prompts, samples):
        it holds no pins nor slots of its own, and publishes what it generates. Counted as a hit of every
        token this row holds."""
        row = self.new_row()
        row._in_request, row._recording = True, self._recording
        row._prompt_len, row._root, row._block_extras = self._prompt_len, self._root, self._block_extras
        row._branch_point, row._num_stored_blocks = self._branch_point, self._num_stored_blocks
        row.num_seen_tokens = row.num_cached_tokens = self.num_seen_tokens
        self.store.count_shared(self._prompt_len, self.num_seen_tokens)
        return row

    def publish_held(self, token_ids: torch.Tensor) -> None:
        """Publish the complete blocks of the tokens held so far, `token_ids[:num_seen_tokens]` (a batch row's
        prompt, before the batch decodes), with the snapshots taken in them; the request goes on."""
        if self._recording and self.num_seen_tokens:
            self._publish(token_ids[: self.num_seen_tokens])
            self._num_stored_blocks = max(self._num_stored_blocks, self.num_seen_tokens // self.store.block_size)

    def begin_batch(self) -> None:
        """Before a batched generate: the rows are served by row caches (`batch.py`), not looked up here."""
        self.begin_request(None, None, None)

    def stack_rows(
        self, rows: list["HybridPrefixCache"], sources: list["HybridPrefixCache"], offsets: list[int], track_rows: bool
    ) -> None:
        """Take the live state of `sources[s]` (the row cache that computed row s's prompt) for row s, its
        tokens from column `offsets[s]`; `rows[s]` keeps row s's bookkeeping. `track_rows`: the rows keep
        their order while generating (no beams), so each snapshots at its boundaries (`end_step`) and
        publishes its sequence (`end_batch`); otherwise the caller closes the rows."""
        self.num_seen_tokens = max(offset + row.num_seen_tokens for row, offset in zip(rows, offsets))
        stack_layers(self, sources)
        for row in {id(source): source for source in sources}.values():
            # The batch holds the rows' states now: their own copies and pins go (`rows.bind_row` gives
            # them views of the batch when they snapshot or publish).
            row.layers = row._new_layers()
            if row._hit is not None:
                self.store.release(row._hit)
                row._hit = None
        self.cached_tokens_per_row = [row.num_cached_tokens for row in rows]
        self.num_cached_tokens = sum(self.cached_tokens_per_row)
        self._rows, self._row_offsets = (rows if track_rows else []), offsets

    def _end_rows_step(self, seq_len: int) -> None:
        self.num_seen_tokens += seq_len
        block_size = self.store.block_size
        for row_idx, (row, offset) in enumerate(zip(self._rows, self._row_offsets)):
            seen = self.num_seen_tokens - offset
            if not row._recording or seen % block_size:
                row.num_seen_tokens = seen
                continue
            bind_row(self, row, row_idx, offset)
            row.num_seen_tokens -= seq_len
            row.end_step(seq_len)

    def end_batch(self, sequences: torch.Tensor | None, eos_ids: set[int]) -> None:
        """After a batched generate: each row publishes its sequence (`sequences` `[rows, total_len]`) up to
        its first end-of-sequence token."""
        rows, self._rows = self._rows, []
        for row_idx, (row, offset) in enumerate(zip(rows, self._row_offsets)):
            if sequences is None:
                row.end_request(None)
                continue
            bind_row(self, row, row_idx, offset)
            tokens = sequences[row_idx, offset:]
            generated = tokens[row._prompt_len :].tolist()
            ends = [i for i, token in enumerate(generated) if token in eos_ids]
            if ends:
                row.num_seen_tokens = min(row.num_seen_tokens, row._prompt_len + ends[0] + 1)
            row.end_request(tokens[None])
        self._close_request()

    def reset(self) -> None:
        super().reset()
        self._token_ids = None
        self.num_cached_tokens = self.num_seen_tokens = 0

    # -- assisted decoding (transformers 5.25: prompt lookup, assistant models; see rollback.py) ------------------

    def activate_past_recording(self, recurrent_states_to_keep: int | None = None, **kwargs) -> None:
        """Before assisted decoding's first verification forward: from now on each forward keeps the states of its
        last `recurrent_states_to_keep` positions, so that `crop` can take rejected drafts back exactly."""
        reason = rollback_refusal(self)
        if reason is not None:
            raise ValueError(
                f"Assisted decoding (prompt lookup, an assistant model) on a HybridPrefixCache needs an exact rollback "
                f"of rejected drafts, which this model cannot have: {reason}. Run it without a HybridPrefixCache."
            )
        if self._rows:
            raise ValueError("Assisted decoding runs one sequence at a time: pass a batch of one prompt.")
        self._rollback = DraftRollback(max(1, recurrent_states_to_keep or 1))

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last `-tokens_to_remove` tokens (a negative count, as transformers' layers take it) of the
        last forward: states restored to the accepted position, K/V cut, and the snapshots of boundaries past it
        given back (they hold drafts)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, got {tokens_to_remove}")
        if self._rollback is None:
            raise ValueError(
                "HybridPrefixCache.crop rolls back rejected drafts of assisted decoding only (after "
                "activate_past_recording); to start over, use a new HybridPrefixCache: the store serves the prefix."
            )
        num_removed = -tokens_to_remove
        self._rollback.restore(self, num_removed)
        if num_removed == 0:
            return
        length = self.num_seen_tokens - num_removed
        for spec in self.layout.attention:
            layer = self.layers[spec.layer_idx]
            layer.keys, layer.values = layer.keys[..., :length, :], layer.values[..., :length, :]
        for spec in self.layout.recurrent:
            seams.set_token_count(self.layers[spec.layer_idx], length)
        self.num_seen_tokens = length
        drafted = [boundary for boundary in self._pending if boundary > length]
        self.store.release_snapshots(self._pending.pop(boundary)[0] for boundary in drafted)
        self._refused = {boundary for boundary in self._refused if boundary <= length}
        if self._decode_boundary is not None and self._decode_boundary > length:
            self._decode_boundary = None
