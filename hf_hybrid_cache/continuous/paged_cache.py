"""`HybridPagedAttentionCache`: transformers' `PagedAttentionCache` (paged K/V of the attention layers, its
allocators, block sharing and prefix matching) plus the recurrent layers' states of a hybrid model, on the
`PrefixStore` that `generate()` uses (`store_link.py`).

- Each running request owns a slot of `StateSlots` from when it is first scheduled until it finishes, fails
  or is cancelled (`free_blocks`, which every one of those paths calls). A request with no slot free waits.
- Each batch the engine packs, the cache writes down per request (in packing order) its slot, whether it
  continues a state, and the block boundaries inside its tokens at which to take states (`packed_plan`),
  each with a store snapshot slot reserved for it: the one-pass layers read that plan
  (`models/gated_delta_net.py`, `models/short_conv.py`) and hand their states back (`stage_checkpoints`).
  Which boundaries follow the store's `mamba_cache_mode` (`store/modes.py`); the page size is the store's
  block size.
- After a forward ran through (transformers' `mark_complete_blocks`), each request's complete blocks are
  published to the store with the snapshots every layer wrote; a forward that failed half-way publishes
  nothing, and its reserved slots go back (`free_blocks`). In mode branch a request keeps only its latest
  boundary past the prompt, published when it finishes, as `generate()` does.
- Prefix caching: a hit is the deepest block of the prompt with a snapshot in the store. Blocks the engine
  still holds (transformers' block sharing, by its own chained hash) are shared; the rest are copied into
  fresh blocks from the store's pages (from its host tier, a Redis another replica wrote, a loaded file),
  and the snapshot into the request's slot.
- A new request sharing more blocks with a running one than the store holds yet (requests arriving
  together under one system prompt) waits until that one has computed them: the running one also saves
  the boundary where the two part (as `generate()` batches do), and the waiting one is then served from it
  instead of computing the same prefix again.
"""

import warnings
from dataclasses import dataclass, field

import torch
from transformers.generation.continuous_batching.cache import PagedAttentionCache
from transformers.generation.continuous_batching.cache_allocators import FullAttentionCacheAllocator
from transformers.generation.continuous_batching.requests import RequestStatus

from .. import seams
from ..store.modes import saved_boundaries
from .state_slots import StateSlots
from .store_link import StoreLink

MAX_REPORTED_REQUESTS = 4096  # cached-token counts kept for requests that finished, newest first
PACKED_BATCH = "hf_hybrid_packed_batch"  # set in the attention kwargs of a continuous batch of ours


@dataclass
class Checkpoint:
    """A boundary (tokens) a forward takes a request's states at, the store slot they go into, and how many
    states the forward's layers have written into it."""

    boundary: int
    slot_id: int
    written: int = 0


@dataclass
class PackedPlan:
    """One forward's packed sequences, in packing order: `cu_seqlens` `[N + 1]`, each sequence's slot,
    whether it continues its slot's state, whether it is a decode step, and its checkpoint offsets (inside it)
    with their checkpoints."""

    cu_seqlens: list[int] = field(default_factory=lambda: [0])
    slots: list[int] = field(default_factory=list)
    has_initial_state: list[bool] = field(default_factory=list)
    decoding: list[bool] = field(default_factory=list)  # one token the request generated, not a prompt token
    checkpoint_offsets: list[list[int]] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)  # flat, sequence by sequence
    sealed: bool = False  # read by a forward: the next request packed starts a new plan


@dataclass
class _Tracked:
    """What the cache keeps of a request holding a slot."""

    state: object  # transformers' RequestState
    root: bytes | None  # its chain's root key (None: its adapters cannot be keyed, nothing stored)
    keys: list[bytes] = field(default_factory=list)  # store keys of its first blocks
    branch_point: int = 0  # where its prompt leaves the longest cached path (tokens)
    stored_blocks: int = 0  # its leading blocks the store held at lookup, or it published since
    checkpoints: list[Checkpoint] = field(default_factory=list)  # taken by the forward running now
    computed: int = 0  # tokens the forward running now will have computed
    held: Checkpoint | None = None  # branch mode: its latest boundary past the prompt, published at its end


class HybridPagedAttentionCache(PagedAttentionCache):
    """transformers' paged K/V cache of a hybrid model's attention layers, plus its recurrent layers' state
    slots, on a prefix store (module docstring). `link` None: no prefix caching."""

    def __init__(self, *args, slots: StateSlots, link: StoreLink | None, **kwargs):
        super().__init__(*args, **kwargs)
        self.slots = slots
        self.page_size = next(iter(self.cache_allocators.values())).tokens_per_page
        # A store block holds full-attention pages; sharing them needs transformers' block sharing on.
        full_attention = all(isinstance(a, FullAttentionCacheAllocator) for a in self.cache_allocators.values())
        caching = link is not None and link.mamba_cache_mode != "none" and self.use_prefix_sharing and full_attention
        self.link = link if caching else None
        if self.link is not None and self.link.block_size != self.page_size:
            raise ValueError(f"page_size={self.page_size} differs from the store's block_size={self.link.block_size}")
        self._allocator_of = {i: a for a in self.cache_allocators.values() for i in a.layer_indices}
        self.plan = PackedPlan(sealed=True)
        self.cached_tokens: dict[str, int] = {}  # request id -> prompt tokens served from the store
        self._tracked: dict[str, _Tracked] = {}  # request id -> what the cache keeps of it
        self._parting_points: dict[str, set[int]] = {}  # running request id -> boundaries a waiting one needs
        self._waiting: set[str] = set()  # pending requests waiting for a running one's boundary

    @property
    def mamba_cache_mode(self) -> str:
        return "none" if self.link is None else self.link.mamba_cache_mode

    def _track(self, request_id: str) -> _Tracked:
        tracked = self._tracked.get(request_id)
        if tracked is None:
            tracked = self._tracked[request_id] = _Tracked(None, None if self.link is None else self.link.root())
        return tracked

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
            self._track(state.request_id).state = state
        return fits

    def free_blocks(self, request_id: str, no_cache: bool = False) -> None:
        super().free_blocks(request_id, no_cache)
        self.slots.free(request_id)
        tracked = self._tracked.pop(request_id, None)
        if tracked is not None:
            self._release(tracked)
        self._parting_points.pop(request_id, None)
        self._waiting.discard(request_id)

    def free_all_requests(self, clear_ledgers: bool = False) -> None:
        super().free_all_requests(clear_ledgers)
        self.slots.free_all()
        for tracked in self._tracked.values():
            self._release(tracked)
        self._tracked.clear()
        self._parting_points.clear()
        self._waiting.clear()

    def _release(self, tracked: _Tracked) -> None:
        """Give back the store slots of states `tracked` took and will not publish (a failed or ended request)."""
        held = [tracked.held] if tracked.held is not None else []
        if self.link is not None:
            self.link.release(checkpoint.slot_id for checkpoint in tracked.checkpoints + held)
        tracked.checkpoints, tracked.held = [], None

    def prepare_fork_request(self, src_state, dst_req_ids: list[str], copy_src_and_dst) -> list[str]:
        """Children get a slot each with the parent's state; those beyond the free slots are left to the
        caller, which prefills them from scratch later."""
        forked = super().prepare_fork_request(src_state, dst_req_ids[: self.slots.num_free], copy_src_and_dst)
        source = self.slots.slot(src_state.request_id)
        parent = self._track(src_state.request_id)
        for request_id in forked:
            self.slots.copy(source, self.slots.assign(request_id))
            self._tracked[request_id] = _Tracked(None, parent.root, list(parent.keys), parent.branch_point,
                                                 parent.stored_blocks)
        return forked

    # -- prefix caching ------------------------------------------------------------------------------------

    def search_prefix_match(self, request_id: str, prompt_ids: list[int]) -> int:
        """The prompt tokens served from the store: its deepest block with a snapshot (at most (len - 1) //
        page_size blocks, so one token is left to compute). Blocks the engine holds are shared, the others
        loaded from the store's pages; a load that fails or finds no room is a miss."""
        if self.link is None:
            return 0
        root = self.link.root()
        tracked = self._tracked.setdefault(request_id, _Tracked(None, root))
        if root is None:
            return 0
        if root != tracked.root:  # adapters switched since it was keyed
            tracked.root, tracked.keys = root, []
        keys = self.link.keys(tracked.keys, root, prompt_ids, (len(prompt_ids) - 1) // self.page_size)
        matched = {name: allocator.match_prefix_blocks(prompt_ids) for name, allocator in self.cache_allocators.items()}
        kv_blocks = min(len(blocks) for blocks in matched.values())
        hit = self.link.lookup(keys, len(prompt_ids))
        try:
            depth = len(hit.blocks)
            tracked.stored_blocks = hit.num_matched
            tracked.branch_point = max(kv_blocks, hit.num_matched) * self.page_size
            if self._wait_for_running(request_id, tracked, depth) or not depth:
                return 0
            slot = self.slots.assign(request_id)
            if slot is None:
                return 0
            try:
                loaded = self._share_or_load(request_id, prompt_ids, matched, kv_blocks, hit)
                if loaded:
                    self.link.restore(hit, self.slots, slot)
            except Exception as error:  # a failed load falls back to computing
                warnings.warn(f"hf_hybrid_cache: loading a prefix from the store failed ({error!r}); computing it")
                loaded = False
            if not loaded:
                for allocator in self.cache_allocators.values():
                    allocator.free_blocks(request_id)
                self.slots.free(request_id)
                return 0
        finally:
            self.link.store.release(hit)
        prefix_len = depth * self.page_size
        self.cached_tokens[request_id] = prefix_len
        while len(self.cached_tokens) > MAX_REPORTED_REQUESTS:
            self.cached_tokens.pop(next(iter(self.cached_tokens)))
        return prefix_len

    def _share_or_load(self, request_id: str, prompt_ids: list[int], matched: dict, kv_blocks: int, hit) -> bool:
        """The request's first `len(hit.blocks)` blocks: the engine's own where it holds them (`matched`, the
        first `kv_blocks`), the rest fresh blocks filled from the store's pages and then registered for
        transformers' block sharing. False (nothing taken) when the engine has no room for them."""
        depth, page = len(hit.blocks), self.page_size
        shared = min(kv_blocks, depth)
        for name, allocator in self.cache_allocators.items():
            allocator.acquire_prefix_blocks(request_id, shared * page, matched[name])
        loaded = depth - shared
        if not loaded:
            return True
        # Fresh blocks as `can_store_request_tokens` allocates them
        sectors = {allocator: allocator.needs_new_sectors(request_id, shared * page, loaded * page)
                   for allocator in self.cache_allocators.values()}
        if self.pool.num_free_sectors < sum(sectors.values()):
            return False
        for allocator, num_sectors in sectors.items():
            for _ in range(num_sectors):
                self.pool.allocate_sector(allocator.index)
            allocator.allocate_cache_to_request(request_id, shared * page, loaded * page)
        for layer_idx, (keys, values) in zip(self.link.attention_layers, self.link.pages(hit, shared)):
            allocator = self._allocator_of[layer_idx]
            for i, block_id in enumerate(allocator.block_table[request_id][shared:depth]):
                k_page, v_page = self._page(allocator, layer_idx, block_id)
                k_page.copy_(keys[:, i * page : (i + 1) * page].transpose(0, 1))
                v_page.copy_(values[:, i * page : (i + 1) * page].transpose(0, 1))
        for allocator in self.cache_allocators.values():
            allocator.mark_complete_blocks(request_id, prompt_ids, loaded)
        return True

    def _page(self, allocator, layer_idx: int, block_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer's keys and values `[page_size, num_kv_heads, head_dim]` in block `block_id` (views; an MLA layer's
        latents and rotated keys, as `generate()`'s cache holds them)."""
        latent = seams.cb_latent_page(allocator, layer_idx, block_id)
        if latent is not None:
            return latent
        keys, values = allocator.get_cache_for_block_table(layer_idx)  # `[num_pages, page_size, heads, dim]`
        page = block_id * (allocator.block_physical_stride // self.page_size)
        return keys[page], values[page]

    def _wait_for_running(self, request_id: str, tracked: _Tracked, depth: int) -> bool:
        """Whether the pending request waits for a running one that shares more of its blocks than the `depth`
        served now and has not computed them yet; if so, that one saves the boundary where they part."""
        owner, parting, keys = None, depth * self.page_size, tracked.keys
        for other_id, other in self._tracked.items():
            if other.state is None or other_id == request_id or other.root != tracked.root:
                continue
            token_ids = other.state.initial_tokens + other.state.generated_tokens
            num_blocks = min(len(keys), len(token_ids) // self.page_size)
            theirs = self.link.keys(other.keys, other.root, token_ids, num_blocks)[:num_blocks]
            shared = next((b for b, (a, c) in enumerate(zip(keys, theirs)) if a != c), num_blocks) * self.page_size
            if shared > parting and other.state.position_offset < shared:
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
            self.plan = PackedPlan()
        tracked = self._tracked[request_id]
        if tracked.checkpoints:  # left by a forward that never reached its end (a failed one's requests are freed)
            self.link.release(checkpoint.slot_id for checkpoint in tracked.checkpoints)
            tracked.checkpoints = []
        state = tracked.state
        end = min(past_length + query_length, len(state.initial_tokens) + len(state.generated_tokens))
        if self.link is not None and tracked.root is not None:
            tracked.checkpoints = self._checkpoints(request_id, tracked, past_length, end)
        tracked.computed = end
        plan = self.plan
        plan.cu_seqlens.append(plan.cu_seqlens[-1] + query_length)
        plan.slots.append(self.slots.slot(request_id))
        plan.has_initial_state.append(past_length > 0)
        plan.decoding.append(past_length >= len(state.initial_tokens))
        plan.checkpoint_offsets.append([checkpoint.boundary - past_length for checkpoint in tracked.checkpoints])
        plan.checkpoints.extend(tracked.checkpoints)

    def _checkpoints(self, request_id: str, tracked: _Tracked, start: int, end: int) -> list[Checkpoint]:
        """The boundaries in (start, end] the request takes states at, each with a store slot reserved; the
        deepest first when the store has room for fewer (a long prompt in mode all would otherwise reserve
        one snapshot per block)."""
        prompt_len = len(tracked.state.initial_tokens)
        boundaries = saved_boundaries(self.mamba_cache_mode, self.page_size, prompt_len, start, end, tracked.branch_point)
        parting = [b for b in self._parting_points.get(request_id, ()) if start < b <= end]
        checkpoints = []
        for boundary in sorted(set(boundaries).union(parting), reverse=True):
            slot_id = self.link.reserve(max(0, boundary // self.page_size - tracked.stored_blocks))
            if slot_id is None:
                break
            checkpoints.append(Checkpoint(boundary, slot_id))
        return checkpoints[::-1]

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
        states at the plan's checkpoints, in order, written into their store slots."""
        for i, checkpoint in enumerate(self.plan.checkpoints):
            checkpoint.written += self.link.write_state(checkpoint.slot_id, layer_idx, conv[i],
                                                        None if recurrent is None else recurrent[i])

    # -- publishing, once a forward ran through ---------------------------------------------------------------

    def mark_complete_blocks(self, state, complete_blocks: dict[str, int]) -> None:
        """transformers' hashing of the blocks the forward completed; then the request's complete blocks and
        the snapshots every layer wrote go to the store. A failed publish only warns: the request's output does
        not depend on it, and the store inserts a block only once fully written."""
        super().mark_complete_blocks(state, complete_blocks)
        tracked = self._tracked.get(state.request_id)
        if self.link is None or tracked is None or tracked.root is None:
            return
        try:
            self._publish(state.request_id, tracked, finished=state.status == RequestStatus.FINISHED)
        except Exception as error:
            warnings.warn(f"hf_hybrid_cache: publishing to the prefix store failed ({error!r}); outputs unaffected")

    def _publish(self, request_id: str, tracked: _Tracked, finished: bool) -> None:
        page = self.page_size
        checkpoints, tracked.checkpoints = tracked.checkpoints, []
        written = [c for c in checkpoints if c.written == self.link.num_states]
        self.link.release(c.slot_id for c in checkpoints if c.written != self.link.num_states)
        prompt_len = len(tracked.state.initial_tokens)
        snapshots = {}
        for checkpoint in written:
            if self.mamba_cache_mode == "branch" and checkpoint.boundary >= prompt_len:
                # Only the latest boundary past the prompt serves the next turn: it replaces the one held.
                if tracked.held is not None:
                    self.link.release([tracked.held.slot_id])
                tracked.held = checkpoint
            else:
                snapshots[checkpoint.boundary // page - 1] = checkpoint.slot_id
        if finished and tracked.held is not None:
            snapshots[tracked.held.boundary // page - 1] = tracked.held.slot_id
            tracked.held = None
        num_blocks = tracked.computed // page
        if not snapshots and num_blocks <= tracked.stored_blocks:
            return
        token_ids = tracked.state.initial_tokens + tracked.state.generated_tokens
        keys = self.link.keys(tracked.keys, tracked.root, token_ids, num_blocks)[:num_blocks]

        def write_page(block_idx: int, views: list[torch.Tensor]) -> None:
            views = iter(views)  # the store's page layout: per attention layer, keys then values
            for layer_idx in self.link.attention_layers:
                allocator = self._allocator_of[layer_idx]
                for live in self._page(allocator, layer_idx, allocator.block_table[request_id][block_idx]):
                    next(views).copy_(live.transpose(0, 1))

        self.link.store.publish(keys, write_page, snapshots)
        tracked.stored_blocks = max(tracked.stored_blocks, num_blocks)
