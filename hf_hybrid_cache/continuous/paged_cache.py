"""`HybridPagedAttentionCache`: transformers' `PagedAttentionCache` (paged K/V of the attention layers, its
allocators, block sharing and prefix matching) plus the recurrent layers' states of a hybrid model.

- Each running request owns a slot of `StateSlots` from when it is first scheduled until it finishes, fails
  or is cancelled (`free_blocks`, which every one of those paths calls). A request with no slot free waits.
- Each batch the engine packs, the cache writes down per request (in packing order) its slot, whether it
  continues a state, and the block boundaries inside its tokens at which to snapshot (`packed_plan`): the
  one-pass layers read that plan (`models/gated_delta_net.py`, `models/short_conv.py`).
- Prefix caching: transformers matches a prompt's K/V blocks by chained block hash; a hit here is the
  deepest matched block whose boundary also has a state snapshot (`StateSnapshots`, keyed by the same
  hash), restored into the request's slot. Which boundaries are saved follows `mamba_cache_mode`
  (`store/modes.py`), with transformers' page size as the block size.
- A new request sharing more blocks with a running one than the cache holds yet (requests arriving
  together under one system prompt) waits until that one has computed them: the running one also saves
  the boundary where the two part (as `generate()` batches do), and the waiting one is then served from it
  instead of computing the same prefix again.
"""

from dataclasses import dataclass, field

import torch
from transformers.generation.continuous_batching.cache import PagedAttentionCache
from transformers.generation.continuous_batching.cache_allocators.cache_allocator import compute_block_hash

from ..store.modes import saved_boundaries
from .snapshots import StateSnapshots
from .state_slots import StateSlots

MAX_REPORTED_REQUESTS = 4096  # cached-token counts kept for requests that finished, newest first
PACKED_BATCH = "hf_hybrid_packed_batch"  # set in the attention kwargs of a continuous batch of ours


@dataclass
class PackedPlan:
    """One forward's packed sequences, in packing order: `cu_seqlens` `[N + 1]`, each sequence's slot,
    whether it continues its slot's state, and its checkpoint offsets (inside it) with their block hashes."""

    cu_seqlens: list[int] = field(default_factory=lambda: [0])
    slots: list[int] = field(default_factory=list)
    has_initial_state: list[bool] = field(default_factory=list)
    checkpoint_offsets: list[list[int]] = field(default_factory=list)
    checkpoint_keys: list[int] = field(default_factory=list)  # flat, sequence by sequence
    sealed: bool = False  # read by a forward: the next request packed starts a new plan


class HybridPagedAttentionCache(PagedAttentionCache):
    """transformers' paged K/V cache of a hybrid model's attention layers, plus its recurrent layers' state
    slots and snapshots (module docstring)."""

    def __init__(self, *args, slots: StateSlots, snapshots: StateSnapshots, mamba_cache_mode: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.slots = slots
        self.snapshots = snapshots
        self.mamba_cache_mode = mamba_cache_mode
        self.page_size = next(iter(self.cache_allocators.values())).tokens_per_page
        self.plan = PackedPlan(sealed=True)
        self.cached_tokens: dict[str, int] = {}  # request id -> prompt tokens served from the cache
        self._requests = {}  # request id -> RequestState, while it holds a slot
        self._block_hashes: dict[str, list[int]] = {}  # request id -> chained hashes of its first blocks
        self._branch_points: dict[str, int] = {}  # request id -> where its prompt left the cached K/V path
        self._parting_points: dict[str, set[int]] = {}  # running request id -> boundaries a waiting one needs
        self._waiting: set[str] = set()  # pending requests waiting for a running one's boundary

    # -- slots: taken with the first cache allocation, given back with the blocks --------------------------

    def can_store_request_tokens(self, state, request_len: int, dry_run: bool = False) -> bool:
        if state.request_id in self._waiting:
            return False
        has_slot = self.slots.slot(state.request_id) is not None
        if not has_slot and self.slots.num_free == 0:
            return False
        fits = super().can_store_request_tokens(state, request_len, dry_run)
        if fits and not dry_run:
            self.slots.assign(state.request_id)
            self._requests[state.request_id] = state
        return fits

    def free_blocks(self, request_id: str, no_cache: bool = False) -> None:
        super().free_blocks(request_id, no_cache)
        self.slots.free(request_id)
        self._requests.pop(request_id, None)
        self._block_hashes.pop(request_id, None)
        self._branch_points.pop(request_id, None)
        self._parting_points.pop(request_id, None)
        self._waiting.discard(request_id)

    def free_all_requests(self, clear_ledgers: bool = False) -> None:
        super().free_all_requests(clear_ledgers)
        self.slots.free_all()
        self._requests.clear()
        self._block_hashes.clear()
        self._branch_points.clear()
        self._parting_points.clear()
        self._waiting.clear()
        if clear_ledgers:  # the K/V blocks the snapshots go with are forgotten
            self.snapshots.clear()

    def prepare_fork_request(self, src_state, dst_req_ids: list[str], copy_src_and_dst) -> list[str]:
        """Children get a slot each with the parent's state; those beyond the free slots are left to the
        caller, which prefills them from scratch later."""
        forked = super().prepare_fork_request(src_state, dst_req_ids[: self.slots.num_free], copy_src_and_dst)
        source = self.slots.slot(src_state.request_id)
        for request_id in forked:
            self.slots.copy(source, self.slots.assign(request_id))
        return forked

    # -- prefix caching ------------------------------------------------------------------------------------

    def _hashes(self, request_id: str, token_ids: list[int], num_blocks: int) -> list[int]:
        """The chained hashes (transformers' `compute_block_hash`) of the request's first `num_blocks` blocks."""
        hashes = self._block_hashes.setdefault(request_id, [])
        for b in range(len(hashes), num_blocks):
            parent = hashes[-1] if hashes else None
            hashes.append(compute_block_hash(parent, token_ids[b * self.page_size : (b + 1) * self.page_size]))
        return hashes[:num_blocks]

    def search_prefix_match(self, request_id: str, prompt_ids: list[int]) -> int:
        """The prompt tokens served from the cache: the deepest block boundary with both its K/V blocks matched
        (at most (len - 1) // page_size blocks, so one token is left to compute) and a state snapshot."""
        self.snapshots.commit()
        if not self.use_prefix_sharing:
            return 0
        matched = {name: allocator.match_prefix_blocks(prompt_ids) for name, allocator in self.cache_allocators.items()}
        kv_blocks = min(len(blocks) for blocks in matched.values())
        self._branch_points[request_id] = kv_blocks * self.page_size
        hashes = self._hashes(request_id, prompt_ids, (len(prompt_ids) - 1) // self.page_size)
        depth = next((b for b in range(kv_blocks, 0, -1) if hashes[b - 1] in self.snapshots), 0)
        if self._wait_for_running(request_id, hashes, depth):
            return 0
        slot = self.slots.assign(request_id) if depth else None
        if slot is None:
            return 0
        self.slots.write(slot, self.snapshots.get(hashes[depth - 1]))
        prefix_len = depth * self.page_size
        for name, allocator in self.cache_allocators.items():
            allocator.acquire_prefix_blocks(request_id, prefix_len, matched[name])
        self.cached_tokens[request_id] = prefix_len
        while len(self.cached_tokens) > MAX_REPORTED_REQUESTS:
            self.cached_tokens.pop(next(iter(self.cached_tokens)))
        return prefix_len

    def _wait_for_running(self, request_id: str, hashes: list[int], depth: int) -> bool:
        """Whether the pending request waits for a running one that shares more of its blocks than the `depth`
        served now and has not computed them yet; if so, that one saves the boundary where they part."""
        if self.mamba_cache_mode == "none":
            return False
        owner, parting = None, depth * self.page_size
        for other_id, state in self._requests.items():
            token_ids = state.initial_tokens + state.generated_tokens
            theirs = self._hashes(other_id, token_ids, min(len(hashes), len(token_ids) // self.page_size))
            shared = next((b for b, (a, c) in enumerate(zip(hashes, theirs)) if a != c), len(theirs)) * self.page_size
            if shared > parting and state.position_offset < shared:
                owner, parting = other_id, shared
        if owner is None:
            self._waiting.discard(request_id)
            return False
        self._parting_points.setdefault(owner, set()).add(parting)
        self._waiting.add(request_id)
        return True

    # -- the packed plan each forward's recurrent layers read ----------------------------------------------

    def _pack(self, request_id: str, past_length: int, query_length: int) -> None:
        if self.plan.sealed:
            self.snapshots.commit()  # what the previous forward staged, if it ran through every layer
            self.plan = PackedPlan()
        state = self._requests[request_id]
        token_ids = state.initial_tokens + state.generated_tokens
        end = min(past_length + query_length, len(token_ids))
        boundaries = saved_boundaries(
            self.mamba_cache_mode, self.page_size, len(state.initial_tokens), past_length, end,
            self._branch_points.get(request_id, 0),
        )
        parting = [b for b in self._parting_points.get(request_id, ()) if past_length < b <= end]
        boundaries = sorted(set(boundaries).union(parting))
        # No more states staged in one forward than the snapshots can keep: the deepest of each request's
        # boundaries first (a long prompt in mode all would otherwise stage one snapshot per block).
        room = self.snapshots.capacity - len(self.plan.checkpoint_keys)
        boundaries = boundaries[len(boundaries) - room :] if room > 0 else []
        hashes = self._hashes(request_id, token_ids, boundaries[-1] // self.page_size) if boundaries else []
        plan = self.plan
        plan.cu_seqlens.append(plan.cu_seqlens[-1] + query_length)
        plan.slots.append(self.slots.slot(request_id))
        plan.has_initial_state.append(past_length > 0)
        plan.checkpoint_offsets.append([b - past_length for b in boundaries])
        plan.checkpoint_keys.extend(hashes[b // self.page_size - 1] for b in boundaries)

    def extend_read_and_write_indices(self, request_id, past_length, query_length, read_index, write_index) -> None:
        self._pack(request_id, past_length, query_length)
        super().extend_read_and_write_indices(request_id, past_length, query_length, read_index, write_index)

    def fill_block_table(self, request_id, past_length, query_length, block_table) -> None:
        self._pack(request_id, past_length, query_length)
        super().fill_block_table(request_id, past_length, query_length, block_table)

    def update(self, key_states, value_states, layer_idx: int, kwargs: dict):
        # Marks the attention call that follows (same kwargs) as one of ours: `engine._sdpa_packed_gqa`.
        kwargs[PACKED_BATCH] = True
        return super().update(key_states, value_states, layer_idx, kwargs)

    def packed_plan(self) -> PackedPlan:
        """The plan of the forward running now (every recurrent layer of it reads the same one)."""
        self.plan.sealed = True
        return self.plan

    def stage_checkpoints(self, layer_idx: int, conv: torch.Tensor, recurrent: torch.Tensor | None) -> None:
        """conv `[N, conv_dim, conv_width]`, recurrent `[N, Hv, K, V]` (None for a short conv): one layer's
        states at the plan's checkpoints, in order."""
        for i, key in enumerate(self.plan.checkpoint_keys):
            self.snapshots.stage(key, layer_idx, conv[i].clone(), None if recurrent is None else recurrent[i].clone())
