"""`RedisTier` against a real redis-server, on the synthetic layout of the unit tests: blocks written by one
store are served to another; damaged, foreign, truncated, evicted or flushed values are misses; a server that
is killed, asleep, paused or full never raises into a lookup or a publish, and the tier recovers when it
is back."""

import socket
import sys
from pathlib import Path

import pytest
import redis

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))

from test_prefix_store import BLOCK_SIZE, LAYOUT, PAGE_BYTES, SNAPSHOT_BYTES, lookup, publish  # noqa: E402

from hf_hybrid_cache.store import PrefixStore  # noqa: E402
from hf_hybrid_cache.store.redis_tier import RedisTier  # noqa: E402

TOKENS = list(range(100, 112))  # three blocks
QUERY = TOKENS + [0]

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture
def stores(redis_server):
    """A factory of bound stores on the test's server (closed after the test)."""
    made = []

    def make(**tier_settings):
        tier_settings.setdefault("first_backoff_s", 0.0)  # tests retry at once instead of waiting
        store = PrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode="all",
                            remote=RedisTier(redis_server.url, **tier_settings))
        store.bind(LAYOUT)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def published(make) -> PrefixStore:
    store = make()
    publish(store, TOKENS)
    assert store.remote.flush(timeout_s=10)
    return store


def served_blocks(store, query=QUERY) -> int:
    hit = lookup(store, query)
    try:
        return len(hit.blocks)
    finally:
        store.release(hit)
        store.check_invariants()


def test_another_store_is_served_what_one_published(stores, redis_server):
    first = published(stores)
    assert first.remote.stats()["writes"] == 6  # three pages and three snapshots
    assert len(redis_server.client().keys("hhc:*")) == 6
    other = stores()
    hit = lookup(other, QUERY)
    keys, _ = other.read_pages(hit)[0]
    assert len(hit.blocks) == 3 and keys[:, -BLOCK_SIZE:].eq(108).all()
    assert all(state.eq(-108).all() for state in other.read_snapshot(hit))
    other.release(hit)
    stats = other.stats()
    assert stats["remote"]["hits"] == 1 and stats["remote"]["hit_blocks"] == 3 and stats["hit_tokens"] == 3 * BLOCK_SIZE
    assert stats["bytes_used"] == 3 * PAGE_BYTES + SNAPSHOT_BYTES  # the pages and the one snapshot a hit needs


def test_a_second_lookup_is_local(stores):
    published(stores)
    other = stores()
    assert served_blocks(other) == 3 and served_blocks(other) == 3
    assert other.remote.stats()["hits"] == 1  # the second hit never asked Redis


@pytest.mark.parametrize("damage", ["garbage", "bit-flip", "truncated", "foreign"])
def test_damaged_values_are_misses(stores, redis_server, damage):
    published(stores)
    client = redis_server.client()
    page_keys = sorted(client.keys("hhc:p:*"))
    first = min(page_keys, key=lambda key: client.get(key))  # any page will do: the chain breaks there
    value = client.get(first)
    if damage == "garbage":
        client.set(first, b"not a value")
    elif damage == "bit-flip":
        client.set(first, value[:-20] + bytes([value[-20] ^ 1]) + value[-19:])
    elif damage == "truncated":
        client.set(first, value[: len(value) // 2])
    else:  # a valid value of another block copied under this key
        other = next(key for key in page_keys if key != first)
        client.set(first, client.get(other))
    other_store = stores()
    assert served_blocks(other_store) < 3
    assert other_store.remote.stats()["corrupt"] == 1


def test_a_value_of_another_layout_is_a_miss(redis_server):
    writer = PrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode="all", remote=redis_server.url)
    writer.bind(LAYOUT)
    publish(writer, TOKENS)
    writer.close()
    reader = PrefixStore(block_size=BLOCK_SIZE * 2, mamba_cache_mode="all", remote=redis_server.url)
    reader.bind(LAYOUT)
    try:
        assert served_blocks(reader) == 0  # other keys and another page shape: nothing to serve
    finally:
        reader.close()


def test_evicted_values_shorten_the_chain(stores, redis_server):
    published(stores)
    client = redis_server.client()
    for key in client.keys("hhc:s:*"):  # snapshots only on the first block left
        client.delete(key)
    assert served_blocks(stores()) == 0
    published(stores)
    pages = client.keys("hhc:p:*")
    client.delete(*pages)
    assert served_blocks(stores()) == 0


def test_a_flush_between_the_two_round_trips_is_a_miss(stores, redis_server):
    published(stores)
    other = stores()
    real_pipeline = other.remote.client.pipeline
    calls = []

    def pipeline(*args, **kwargs):
        made = real_pipeline(*args, **kwargs)
        real_execute = made.execute

        def execute(*args, **kwargs):
            result = real_execute(*args, **kwargs)
            calls.append(1)
            if len(calls) == 1:
                redis_server.client().flushall()  # after "which values exist", before reading them
            return result

        made.execute = execute
        return made

    other.remote.client.pipeline = pipeline
    assert served_blocks(other) == 0 and len(calls) == 2


def test_a_killed_server_is_a_miss_and_writes_wait_for_it(stores, redis_server):
    other = stores(timeout_s=0.5)
    redis_server.kill()
    assert served_blocks(other) == 0
    publish(other, TOKENS)  # queued; the writer fails and the breaker opens
    stats = other.remote.stats()
    assert stats["errors"] >= 1
    redis_server.start()
    later = list(range(200, 212))
    publish(other, later)
    assert other.remote.flush(timeout_s=10)
    assert not other.remote.stats()["breaker_open"]
    assert served_blocks(stores(), later + [0]) == 3


def test_a_paused_server_times_out_into_a_miss(stores, redis_server):
    published(stores)
    other = stores(timeout_s=0.2)
    admin = redis_server.client()
    admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
    assert served_blocks(other) == 0
    assert other.remote.stats()["errors"] == 1 and other.remote.stats()["breaker_open"]
    admin.ping()  # paused too: answers once the pause is over
    assert served_blocks(other) == 3  # back: the breaker lets the next lookup through


def test_a_sleeping_server_times_out_into_a_miss(stores, redis_server):
    published(stores)
    other = stores(timeout_s=0.2)
    with socket.create_connection(("127.0.0.1", redis_server.port)) as raw:
        raw.sendall(b"DEBUG SLEEP 2\r\n")  # the server sleeps; its reply comes when it wakes
        with pytest.raises(redis.exceptions.TimeoutError):  # it is asleep now
            redis_server.client(timeout_s=0.1).ping()
        assert served_blocks(other) == 0
        assert other.remote.stats()["errors"] == 1
        assert raw.recv(16).startswith(b"+OK")  # awake again
    assert served_blocks(other) == 3


def test_a_full_server_refuses_writes_and_still_serves(stores, redis_server):
    published(stores)
    client = redis_server.client()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", client.info("memory")["used_memory"] + 1024)
    writer = stores()
    publish(writer, list(range(200, 240)))
    assert writer.remote.flush(timeout_s=10)
    assert writer.remote.stats()["write_errors"] > 0
    assert served_blocks(stores()) == 3


def test_pending_writes_are_bounded_in_bytes(stores, redis_server):
    store = stores(max_pending_bytes=3 * PAGE_BYTES, timeout_s=10, flush_timeout_s=0.2)
    with socket.create_connection(("127.0.0.1", redis_server.port)) as raw:
        raw.sendall(b"DEBUG SLEEP 2\r\n")  # the writer blocks on the sleeping server; writes pile up
        with pytest.raises(redis.exceptions.TimeoutError):
            redis_server.client(timeout_s=0.1).ping()
        publish(store, list(range(100, 132)))  # 8 pages and 8 snapshots
        stats = store.remote.stats()
        assert stats["pending_bytes"] <= 3 * PAGE_BYTES and stats["dropped_writes"] >= 10
        assert raw.recv(16).startswith(b"+OK")


def test_writes_while_the_breaker_is_open_are_dropped(stores, redis_server):
    store = stores(timeout_s=0.2, first_backoff_s=60.0, flush_timeout_s=0.2)
    redis_server.kill()
    assert served_blocks(store) == 0  # opens the breaker
    publish(store, TOKENS)
    stats = store.remote.stats()
    assert stats["breaker_open"] and stats["dropped_writes"] == 6 and stats["pending_bytes"] == 0


def test_close_flushes_what_is_queued(redis_server):
    store = PrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode="all", remote=redis_server.url)
    store.bind(LAYOUT)
    publish(store, TOKENS)
    store.close()
    assert len(redis_server.client().keys("hhc:*")) == 6


def test_key_prefixes_keep_deployments_apart(stores, redis_server):
    writer = stores(key_prefix="tenant-a:")
    publish(writer, TOKENS)
    assert writer.remote.flush(timeout_s=10)
    assert served_blocks(stores(key_prefix="tenant-b:")) == 0
    assert served_blocks(stores(key_prefix="tenant-a:")) == 3


def test_bad_urls_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="redis://"):
        PrefixStore(remote="http://example.com")
    with pytest.raises(TypeError, match="Redis URL"):
        PrefixStore(remote=42)
