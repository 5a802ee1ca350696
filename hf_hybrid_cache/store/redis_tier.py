"""`RedisTier`: the remote tier (`remote.py`) on a Redis server, shared by every process and machine that uses it.

Each block is two values, `{prefix}p:{key}` (its K/V page) and `{prefix}s:{key}` (its snapshot, when it has
one), so Redis evicts them apart under its own `maxmemory` policy. A value is `MAGIC | header length |
JSON header (format, layout digest, kind, block key) | raw tensor bytes | CRC32`: anything corrupt,
truncated, written for another layout or stored under another key fails its check and is a miss (with a
warning), never a hit; nothing is unpickled. Block keys already digest the model and the namespace.

Never stuck: short connect and operation timeouts, no client-side retries, and a circuit breaker that opens
on a connection error or a timeout and lets one call through after a backoff (0.5 s, doubling to 30 s);
while it is open, reads are misses and new writes are dropped (counted); those already queued wait for it.
Writes leave the request's path: `write`
copies the tensors to host memory and queues them; one thread builds the values and sends them in
pipelines. The queue is bounded in bytes (the oldest writes are dropped, and counted); `close()` (also at
normal process exit) flushes within a bounded time. Checked with redis-py 8.1 and Redis 7.0.
"""

import atexit
import collections
import json
import threading
import time
import warnings
import weakref
import zlib

import torch

from .hashing import digest
from .remote import RemoteBlock, RemoteTier

MAGIC = b"HHC\x01"
FORMAT_VERSION = 1
DEFAULT_KEY_PREFIX = "hhc:"
BREAKER_FIRST_BACKOFF_S = 0.5
BREAKER_MAX_BACKOFF_S = 30.0
WRITE_BATCH_BYTES = 8 << 20  # one pipeline of writes carries at most about this much


class CircuitBreaker:
    """Closed until a failure; then open for a backoff that doubles with each failure in a row, after which
    one call may try again (success closes it)."""

    def __init__(self, first_backoff_s: float = BREAKER_FIRST_BACKOFF_S, max_backoff_s: float = BREAKER_MAX_BACKOFF_S):
        self.first_backoff_s, self.max_backoff_s = first_backoff_s, max_backoff_s
        self.failures = 0
        self.open_until = 0.0

    def allows(self) -> bool:
        return time.monotonic() >= self.open_until

    @property
    def is_open(self) -> bool:
        return self.failures > 0

    def failed(self) -> bool:
        """Record a failure; True when this one opened a closed breaker (a new outage)."""
        self.failures += 1
        self.open_until = time.monotonic() + min(self.max_backoff_s, self.first_backoff_s * 2 ** (self.failures - 1))
        return self.failures == 1

    def succeeded(self) -> None:
        self.failures, self.open_until = 0, 0.0


class RedisTier(RemoteTier):
    """A remote tier on Redis.

    Args:
        url: a redis-py URL: `redis://[user:password@]host:port/db`, `rediss://` for TLS, `unix://path`.
        client: an already made redis-py client instead of `url` (a `RedisCluster`, or any `Redis` with the
            settings you want). Its commands should time out: a client without timeouts can block requests.
        key_prefix: the prefix of every key (one per tenant or deployment, if they share a database).
        connect_timeout_s, timeout_s: connect and per-operation timeouts of the client made from `url`.
        max_pending_bytes: bound on the bytes waiting to be written; the oldest writes are dropped beyond it.
        flush_timeout_s: how long `close()` waits for queued writes.
        first_backoff_s, max_backoff_s: the circuit breaker's first and longest wait before trying again.
    """

    def __init__(self, url: str | None = None, client=None, key_prefix: str = DEFAULT_KEY_PREFIX,
                 connect_timeout_s: float = 0.25, timeout_s: float = 0.5, max_pending_bytes: int = 256 << 20,
                 flush_timeout_s: float = 5.0, first_backoff_s: float = BREAKER_FIRST_BACKOFF_S,
                 max_backoff_s: float = BREAKER_MAX_BACKOFF_S):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if (url is None) == (client is None):
            raise ValueError("RedisTier needs exactly one of url= (for example 'redis://127.0.0.1:6379/0') or client=")
        if url is not None and not isinstance(url, str):
            raise TypeError(f"url must be a str such as 'redis://host:6379/0', got {type(url).__name__}")
        if isinstance(max_pending_bytes, bool) or not isinstance(max_pending_bytes, int) or max_pending_bytes < 0:
            raise ValueError(f"max_pending_bytes must be an int >= 0, got {max_pending_bytes!r}")
        if client is None:
            try:
                client = redis.Redis.from_url(url, socket_connect_timeout=connect_timeout_s, socket_timeout=timeout_s,
                                              retry=Retry(NoBackoff(), 0))
            except ValueError as error:
                raise ValueError(f"not a Redis URL: {url!r} ({error}); use redis://host:port/db or rediss://...") from None
        self.client = client
        self.url = url
        self.key_prefix = key_prefix
        self.max_pending_bytes = max_pending_bytes
        self.flush_timeout_s = flush_timeout_s
        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        self._redis_error = redis.exceptions.RedisError
        self._breaker = CircuitBreaker(first_backoff_s, max_backoff_s)
        self._lock = threading.Condition()
        self._queue: collections.deque = collections.deque()  # (redis key, header, host tensors, num_bytes)
        self._pending_bytes = 0
        self._sending = 0  # writes taken off the queue, not yet acknowledged
        self._closed = False
        self._layout_digest = None
        self._page_specs = self._snapshot_specs = None
        self._counters = dict(hits=0, hit_blocks=0, misses=0, errors=0, corrupt=0, writes=0, write_errors=0,
                              dropped_writes=0)
        # Daemon: a process that never closes its store still exits (its queued writes are then lost).
        self._writer = threading.Thread(target=self._write_loop, daemon=True, name="hf_hybrid_cache-redis-writer")
        self._writer.start()
        atexit.register(_close_at_exit, weakref.ref(self))

    def __repr__(self) -> str:
        return f"RedisTier({self.url or type(self.client).__name__!r}, key_prefix={self.key_prefix!r})"

    def bind(self, page_specs, snapshot_specs) -> None:
        self._page_specs, self._snapshot_specs = list(page_specs), list(snapshot_specs)
        description = [(kind, list(spec.shape), str(spec.dtype)) for kind, specs in (("page", page_specs),
                       ("snapshot", snapshot_specs)) for spec in specs]
        self._layout_digest = digest(b"hf_hybrid_cache/remote-layout", json.dumps(description).encode()).hex()

    # -- writing -----------------------------------------------------------------------------------------

    def write(self, key, parent_key, page, snapshot) -> None:
        entries = [("p", page)] + ([("s", snapshot)] if snapshot is not None else [])
        with self._lock:
            if self._closed:
                return
            if not self._breaker.allows():
                # Redis is down: copying and queueing for it would only cost the requests running now.
                self._counters["dropped_writes"] += len(entries)
                return
            for kind, tensors in entries:
                host = [tensor.detach().to("cpu", copy=True) for tensor in tensors]
                num_bytes = sum(t.numel() * t.element_size() for t in host)
                self._queue.append((self._redis_key(kind, key), self._header(kind, key), host, num_bytes))
                self._pending_bytes += num_bytes
            while self._pending_bytes > self.max_pending_bytes and self._queue:
                *_, num_bytes = self._queue.popleft()
                self._pending_bytes -= num_bytes
                self._counters["dropped_writes"] += 1
            self._lock.notify_all()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued write is sent (or dropped); False if `timeout_s` ran out first."""
        deadline = time.monotonic() + (self.flush_timeout_s if timeout_s is None else timeout_s)
        with self._lock:
            while self._queue or self._sending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
            return True

    def close(self) -> None:
        """Flush within `flush_timeout_s`, drop what is left, stop the writer and disconnect."""
        if self._closed:
            return
        self.flush()
        with self._lock:
            self._closed = True
            self._counters["dropped_writes"] += len(self._queue)
            self._queue.clear()
            self._pending_bytes = 0
            self._lock.notify_all()
        self._writer.join(timeout=self.flush_timeout_s)
        try:
            self.client.close()
        except Exception:  # closing a broken connection: nothing left to do
            pass

    def _take_batch(self) -> list | None:
        """The next writes to send, once the breaker lets them through; None once closed."""
        with self._lock:
            while not (self._queue and self._breaker.allows()):
                if self._closed:
                    return None
                # Nothing queued: sleep until `write` or `close` notifies; queued: until the breaker's retry.
                self._lock.wait(max(0.01, self._breaker.open_until - time.monotonic()) if self._queue else None)
            batch, num_bytes = [], 0
            while self._queue and (not batch or num_bytes < WRITE_BATCH_BYTES):
                item = self._queue.popleft()
                self._pending_bytes -= item[3]
                num_bytes += item[3]
                batch.append(item)
            self._sending = len(batch)
            return batch

    def _write_loop(self) -> None:
        """The writer thread's body."""
        while (batch := self._take_batch()) is not None:
            try:
                self._send(batch)
            finally:
                with self._lock:
                    self._sending = 0
                    self._lock.notify_all()

    def _send(self, batch: list) -> None:
        try:
            pipeline = self.client.pipeline(transaction=False)
            for redis_key, header, host, _ in batch:
                pipeline.set(redis_key, _encode(header, host))
            results = pipeline.execute(raise_on_error=False)
        except self._errors as error:
            self._failed("write", error, len(batch))
            return
        except Exception as error:  # anything else from the client: counted, never raised to a request
            self._count(write_errors=len(batch), errors=1)
            _warn(f"writing to Redis failed ({error!r}); {len(batch)} values not stored")
            return
        failed = sum(isinstance(result, Exception) for result in results)
        with self._lock:
            self._breaker.succeeded()
            self._counters["writes"] += len(batch) - failed
            self._counters["write_errors"] += failed
        if failed:  # typically OOM under `maxmemory` with noeviction: the rest of the store still works
            _warn(f"Redis refused {failed} of {len(batch)} writes ({next(r for r in results if isinstance(r, Exception))!r})")

    # -- reading -----------------------------------------------------------------------------------------

    def read_chain(self, keys, needs_snapshot) -> list[RemoteBlock]:
        if not keys or self._layout_digest is None:
            return []
        with self._lock:
            if not self._breaker.allows():
                self._counters["misses"] += 1
                return []
        try:
            blocks = self._read_chain(keys, needs_snapshot)
        except self._errors as error:
            self._failed("read", error)
            return []
        except Exception as error:  # a protocol or server error: a miss, never an exception in generate
            self._count(errors=1, misses=1)
            _warn(f"reading from Redis failed ({error!r}); served from the local tiers only")
            return []
        with self._lock:
            self._breaker.succeeded()
            if blocks:
                self._counters["hits"] += 1
                self._counters["hit_blocks"] += len(blocks)
            else:
                self._counters["misses"] += 1
        return blocks

    def _read_chain(self, keys, needs_snapshot) -> list[RemoteBlock]:
        """Two round trips: which values exist (pipelined EXISTS), then the pages of the usable run and its
        last snapshot (pipelined GET)."""
        pipeline = self.client.pipeline(transaction=False)
        for key in keys:
            pipeline.exists(self._redis_key("p", key))
            if needs_snapshot:
                pipeline.exists(self._redis_key("s", key))
        found = pipeline.execute()
        pages, snapshots = (found[0::2], found[1::2]) if needs_snapshot else (found, [])
        run = next((i for i, present in enumerate(pages) if not present), len(pages))
        if needs_snapshot:
            run = max((i + 1 for i in range(run) if snapshots[i]), default=0)
        if run == 0:
            return []
        pipeline = self.client.pipeline(transaction=False)
        for key in keys[:run]:
            pipeline.get(self._redis_key("p", key))
        if needs_snapshot:
            pipeline.get(self._redis_key("s", keys[run - 1]))
        values = pipeline.execute()
        page_values, snapshot_value = values[:run], values[run] if needs_snapshot else None
        blocks = []
        for i, (key, value) in enumerate(zip(keys, page_values)):
            page = self._decode(value, "p", key, self._page_specs)
            if page is None:
                break
            snapshot = None
            if needs_snapshot and i == run - 1:
                snapshot = self._decode(snapshot_value, "s", key, self._snapshot_specs)
                if snapshot is None:
                    return []  # the chain's only usable end is gone or damaged
            blocks.append(RemoteBlock(key, page, snapshot))
        if needs_snapshot and len(blocks) < run:
            return []  # a page in the middle is gone: the snapshot past it cannot be reached
        return blocks

    def _decode(self, value: bytes | None, kind: str, key: bytes, specs) -> list[torch.Tensor] | None:
        """The tensors in `value` if it passes every check; None (a miss, with a warning unless simply gone)."""
        if value is None:
            _warn("a Redis value vanished between two reads (evicted or flushed); treated as a miss")
            return None
        problem, tensors = _decode_checked(value, self._header(kind, key), specs)
        if problem is not None:
            self._count(corrupt=1)
            _warn(f"a Redis value under {self._redis_key(kind, key)} is {problem}; treated as a miss")
            return None
        return tensors

    # -- bookkeeping -------------------------------------------------------------------------------------

    def _redis_key(self, kind: str, key: bytes) -> str:
        return f"{self.key_prefix}{kind}:{key.hex()}"

    def _header(self, kind: str, key: bytes) -> bytes:
        return json.dumps(dict(format=FORMAT_VERSION, layout=self._layout_digest, kind=kind, key=key.hex()),
                          separators=(",", ":")).encode()

    def _failed(self, what: str, error: Exception, num_writes: int = 0) -> None:
        with self._lock:
            self._counters["errors"] += 1
            self._counters["write_errors"] += num_writes
            if what == "read":
                self._counters["misses"] += 1
            opened = self._breaker.failed()
            backoff = self._breaker.open_until - time.monotonic()
        if opened:
            _warn(f"Redis is unreachable ({error!r}); serving from the local tiers, retrying in {backoff:.1f} s")

    def _count(self, **increments) -> None:
        with self._lock:
            for name, value in increments.items():
                self._counters[name] += value

    def stats(self) -> dict:
        """hits / misses (lookups that did / did not get blocks), hit_blocks, errors (failed operations),
        corrupt (values that failed a check), writes, write_errors, dropped_writes (over the queue's bound or
        left at close), pending_writes, pending_bytes, and whether the breaker is open."""
        with self._lock:
            return dict(**self._counters, pending_writes=len(self._queue) + self._sending,
                        pending_bytes=self._pending_bytes, breaker_open=self._breaker.is_open)


def _encode(header: bytes, tensors: list[torch.Tensor]) -> bytes:
    payload = b"".join(t.contiguous().view(torch.uint8).numpy().tobytes() for t in tensors)
    body = MAGIC + len(header).to_bytes(4, "little") + header + payload
    return body + zlib.crc32(body).to_bytes(4, "little")


def _decode_checked(value: bytes, header: bytes, specs) -> tuple[str | None, list[torch.Tensor] | None]:
    """(None, tensors) when `value` is what `_encode(header, tensors of specs)` gave; else (what is wrong, None)."""
    expected = sum(spec.num_bytes for spec in specs)
    if not value.startswith(MAGIC) or len(value) < len(MAGIC) + 8:
        return "not one of ours", None
    view = memoryview(value)
    if zlib.crc32(view[:-4]) != int.from_bytes(view[-4:], "little"):
        return "damaged (checksum)", None
    header_len = int.from_bytes(view[4:8], "little")
    if view[8 : 8 + header_len] != header:
        return "for another block, layout or format", None
    payload = view[8 + header_len : -4]
    if len(payload) != expected:
        return "truncated", None
    # One copy into writable memory (torch wants it), shared by the tensors: the slots copy from these.
    flat = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    tensors, offset = [], 0
    for spec in specs:
        tensors.append(flat[offset : offset + spec.num_bytes].view(spec.dtype).reshape(spec.shape))
        offset += spec.num_bytes
    return None, tensors


def _warn(message: str) -> None:
    warnings.warn(f"hf_hybrid_cache: {message}", RuntimeWarning, stacklevel=3)


def _close_at_exit(tier_ref) -> None:
    tier = tier_ref()
    if tier is not None:
        tier.close()
