"""Helpers for the reliability tests: a store that checks itself after every operation, and leak checks.
The cold-run oracle is re-exported from `cold_oracle` for the test modules' convenience."""

import threading

import torch

import hf_hybrid_cache as hhc

from cold_oracle import assert_same_as_cold, cold_generate, generate, random_tokens  # noqa: F401


class CheckedPrefixStore(hhc.PrefixStore):
    """A PrefixStore that checks its budget right after every slot allocation (the only step that
    grows `bytes_used`, so this is the peak of every moment) and all invariants after every lookup,
    release and publish, inside the store's own lock. Violations raise and are also kept in
    `violations`, so a failure inside a worker thread is not lost."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.violations: list[str] = []
        self.peak_bytes = 0
        self.num_checks = 0

    def bind(self, layout, model_fingerprint=None):
        with self._lock:
            was_bound = self.layout is not None
            super().bind(layout, model_fingerprint)
            if not was_bound:
                for tier in self._tiers.tiers:
                    for pool in (tier.pages, tier.snapshots):
                        pool.allocate = self._checked_allocate(pool.allocate, tier)

    def _checked_allocate(self, allocate, tier):
        def checked():
            slot_id = allocate()
            if tier.name == "device":
                self.peak_bytes = max(self.peak_bytes, self.bytes_used)
            if tier.bytes_used > tier.max_bytes:
                self._fail(f"{tier.name} tier holds {tier.bytes_used} bytes > its budget {tier.max_bytes} after an allocation")
            return slot_id

        return checked

    def _fail(self, message: str) -> None:
        self.violations.append(message)
        raise RuntimeError(message)

    def _check(self) -> None:
        self.num_checks += 1
        try:
            self.check_invariants()
        except RuntimeError as error:
            self._fail(str(error))

    def lookup(self, keys, num_query_tokens, may_end_after=None):
        with self._lock:
            hit = super().lookup(keys, num_query_tokens, may_end_after)
            self._check()
            return hit

    def release(self, hit):
        with self._lock:
            super().release(hit)
            self._check()

    def publish(self, keys, write_page, snapshots):
        with self._lock:
            try:
                return super().publish(keys, write_page, snapshots)
            finally:
                self._check()


def all_pins(store: hhc.PrefixStore) -> list[int]:
    with store._lock:
        return [block.num_pins for block in store._index]


def assert_store_at_rest(store: hhc.PrefixStore) -> None:
    """No cache is live: invariants hold, nothing is pinned nor reserved, every slot belongs to a block."""
    store.check_invariants()
    stats = store.stats()
    assert stats["pinned_blocks"] == 0 and set(all_pins(store)) <= {0}
    assert stats["reserved_snapshots"] == 0
    assert stats["bytes_used"] <= stats["max_bytes"]
    assert sum(tier.pages.num_used for tier in store._tiers.tiers) == stats["blocks"]
    assert sum(tier.snapshots.num_used for tier in store._tiers.tiers) == stats["snapshots"]


def prompt_family(num_prompts: int, prefix_len: int, tail_len: int, seed: int) -> list[torch.Tensor]:
    """`num_prompts` prompts `[1, prefix_len + tail_len]` sharing their first `prefix_len` tokens."""
    prefix = random_tokens(prefix_len, seed=seed)
    return [torch.cat([prefix, random_tokens(tail_len, seed=seed * 1000 + i + 1)])[None] for i in range(num_prompts)]


class LayerFault:
    """A forward pre-hook raising `error` on the `fail_on`-th call of one layer (1-based)."""

    def __init__(self, module: torch.nn.Module, error: BaseException, fail_on: int):
        self.error, self.fail_on, self.num_calls = error, fail_on, 0
        self.lock = threading.Lock()
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        with self.lock:
            self.num_calls += 1
            if self.num_calls == self.fail_on:
                raise self.error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()
