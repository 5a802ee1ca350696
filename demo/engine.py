"""Runs one `generate()` per request, through a `HybridPrefixCache` or without one, and measures it.

No Gradio here: the chat UI and the `/generate` endpoint both call `ChatEngine.stream`. The engine also
swaps the process-wide `PrefixStore` when the mode or block size changes (both are fixed per store), and
keeps it in a file across restarts when given one.
"""

import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
from transformers.generation.streamers import BaseStreamer

import hf_hybrid_cache as hhc

from demo.loader import LoadedModel


@dataclass(frozen=True)
class TurnStats:
    """What one request cost: every figure comes from the cache's counters or the clock."""

    prompt_tokens: int
    cached_tokens: int  # prompt tokens restored from the store
    computed_tokens: int  # prompt tokens the model ran (prompt_tokens - cached_tokens)
    new_tokens: int
    ttft_s: float  # from calling generate() to the first new token
    # A hit's prompt run again cold, right after (the same generate() up to its first token, no cache): what
    # the hit saved, measured rather than estimated. None when nothing was served from the store.
    cold_ttft_s: float | None
    tokens_per_s: float | None  # decode rate after the first token; None below two new tokens
    prefix_cache: bool
    mode: str
    block_size: int

    def as_dict(self) -> dict:
        return asdict(self)


class _TimedTokenStreamer(BaseStreamer):
    """Forwards new token ids to a queue and notes when the first and last arrive.

    generate() calls `put` once with the prompt before any new token: that call is skipped.
    """

    def __init__(self, token_queue: queue.Queue):
        self.token_queue = token_queue
        self.prompt_skipped = False
        self.first_token_time: float | None = None
        self.last_token_time: float | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_skipped:
            self.prompt_skipped = True
            return
        now = time.perf_counter()
        if self.first_token_time is None:
            self.first_token_time = now
        self.last_token_time = now
        self.token_queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        # The worker signals the end itself, after it has read the cache's counters.
        pass


class ChatEngine:
    """One patched model shared by every browser tab and API call, and the process-wide store's settings.

    Requests run one at a time (a lock): on a CPU, concurrent requests only slow each other down, and a
    store swap never lands in the middle of a request. The store itself is thread-safe.
    """

    def __init__(self, loaded: LoadedModel, max_bytes: int, store_path: Path | None = None, remote: str | None = None):
        self.loaded = loaded
        self.max_bytes = max_bytes
        self.store_path = store_path
        self.remote = remote  # a Redis URL every store of this engine shares, or None
        self._lock = threading.Lock()

    def load_store(self) -> bool:
        """Make the store saved at `store_path` the process-wide one; False when there is no such file.

        Raises ValueError naming the file when it is damaged or holds another model's blocks.
        """
        if self.store_path is None or not self.store_path.exists():
            return False
        store = hhc.PrefixStore.load(self.store_path, max_bytes=self.max_bytes, remote=self.remote)
        try:
            hhc.HybridPrefixCache(self.loaded.model, store=store)  # binds it: another layout fails now, not mid-chat
        except ValueError as error:
            raise ValueError(f"{self.store_path} was saved for another model ({error}); pass another --store") from None
        with self._lock:
            hhc.set_default_store(store)
        return True

    def save_store(self) -> None:
        """Save the process-wide store to `store_path` (atomically), if the engine has one."""
        if self.store_path is not None:
            hhc.get_default_store().save(self.store_path)

    def configure_store(self, mode: str, block_size: int) -> None:
        """Make a new, empty process-wide store unless the current one already has these settings
        (and this engine's budget and remote tier)."""
        with self._lock:
            store = hhc.get_default_store()
            settings = (store.mamba_cache_mode, store.block_size, store.max_bytes, getattr(store.remote, "url", None))
            if settings != (mode, block_size, self.max_bytes, self.remote):
                hhc.set_default_store(hhc.PrefixStore(
                    block_size=block_size, mamba_cache_mode=mode, max_bytes=self.max_bytes, remote=self.remote
                ))
                store.close()  # flushes what the old store still had to write to the remote tier

    def warm_up(self) -> None:
        """Run generate once with the prefix cache and once without, so that the first measured turn
        does not pay for lazy initialisation. A throwaway store keeps the shared one's counters clean."""
        prompt_ids = self.text_prompt_ids("warm up " * 8)
        throwaway = hhc.PrefixStore(block_size=16, mamba_cache_mode="all", max_bytes=64 << 20)
        with self._lock:
            for cache in (hhc.HybridPrefixCache(self.loaded.model, store=throwaway), None):
                self._call_generate(prompt_ids, max_new_tokens=2, cache=cache)

    def store_stats(self) -> dict:
        """The process-wide store's counters (see `PrefixStore.stats`), and `saved_to`: its file or None."""
        return {**hhc.get_default_store().stats(), "saved_to": self.store_path}

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation rendered by the model's chat template, ready for the reply."""
        tokenizer = self.loaded.tokenizer
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The template already wrote any special tokens the model expects.
        return tokenizer(text, add_special_tokens=False).input_ids

    def text_prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of raw text, without a chat template."""
        return self.loaded.tokenizer(prompt).input_ids

    def stream(
        self, prompt_ids: list[int], max_new_tokens: int, prefix_cache: bool = True
    ) -> Iterator[tuple[str, TurnStats | None]]:
        """Generate a reply, yielding `(reply_so_far, None)` per new token, then `(reply, stats)` once."""
        if not prompt_ids:
            raise ValueError("the prompt is empty: type some text first")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        token_queue: queue.Queue = queue.Queue()
        worker = threading.Thread(
            target=self._run, args=(prompt_ids, max_new_tokens, prefix_cache, token_queue), daemon=True
        )
        worker.start()
        new_ids: list[int] = []
        reply = ""
        while True:
            item = token_queue.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, TurnStats):
                yield reply, item
                return
            new_ids.extend(item)
            reply = self.loaded.tokenizer.decode(new_ids, skip_special_tokens=True)
            yield reply, None

    def _run(self, prompt_ids: list[int], max_new_tokens: int, prefix_cache: bool, token_queue: queue.Queue):
        # Runs in a worker thread so that the caller can stream; whatever happens ends the caller's loop.
        try:
            with self._lock:
                stats = self._generate(prompt_ids, max_new_tokens, prefix_cache, token_queue)
                # The reply has streamed; only its stats line waits for the write (so that it is on disk
                # when the caller sees the turn end).
                if prefix_cache:
                    self.save_store()
                token_queue.put(stats)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            token_queue.put(error)

    def _generate(self, prompt_ids, max_new_tokens, prefix_cache, token_queue) -> TurnStats:
        store = hhc.get_default_store()
        # Cache off: generate builds its own cache, as in plain transformers.
        cache = hhc.HybridPrefixCache(self.loaded.model) if prefix_cache else None
        streamer = _TimedTokenStreamer(token_queue)
        start = time.perf_counter()
        output = self._call_generate(prompt_ids, max_new_tokens, cache, streamer)
        new_tokens = output.shape[1] - len(prompt_ids)
        cached_tokens = cache.num_cached_tokens if cache is not None else 0
        # max_new_tokens >= 1, so generate() streamed at least one token.
        first, last = streamer.first_token_time, streamer.last_token_time
        decode_s = last - first
        cold_ttft_s = None
        if cached_tokens:
            cold_start = time.perf_counter()
            self._call_generate(prompt_ids, max_new_tokens=1)
            cold_ttft_s = time.perf_counter() - cold_start
        return TurnStats(
            prompt_tokens=len(prompt_ids),
            cached_tokens=cached_tokens,
            computed_tokens=len(prompt_ids) - cached_tokens,
            new_tokens=new_tokens,
            ttft_s=first - start,
            cold_ttft_s=cold_ttft_s,
            tokens_per_s=(new_tokens - 1) / decode_s if new_tokens > 1 and decode_s > 0 else None,
            prefix_cache=prefix_cache,
            mode=store.mamba_cache_mode,
            block_size=store.block_size,
        )

    def _call_generate(self, prompt_ids, max_new_tokens, cache=None, streamer=None) -> torch.Tensor:
        model = self.loaded.model
        input_ids = torch.tensor([prompt_ids], device=model.device)
        # `cache=` is transformers 5's new name for `past_key_values=` (the old one warns).
        cache_kwargs = {"cache": cache} if cache is not None else {}
        return model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            streamer=streamer,
            pad_token_id=self.loaded.tokenizer.pad_token_id,
            **self.loaded.generate_kwargs,
            **cache_kwargs,
        )
