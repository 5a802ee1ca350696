"""A store shared through a real redis-server on the tiny Qwen3-Next: a prompt one store (or process) computed is
served to another, equal to cold; and under every fault on the real server (killed mid-run, asleep, paused,
full, values overwritten with garbage, flushed between a lookup's two reads) outputs equal cold and nothing
is raised."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import torch
from cold_oracle import assert_same_as_cold, cold_generate, generate, random_tokens

import hf_hybrid_cache as hhc
from hf_hybrid_cache.store.redis_tier import RedisTier

BLOCK_SIZE = 16
PROMPT = random_tokens(100, seed=1)
NEXT_TURN = torch.cat([PROMPT, random_tokens(20, seed=2)])

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def shared_store(redis_server, **tier_settings) -> hhc.PrefixStore:
    tier_settings = {"timeout_s": 0.2, "first_backoff_s": 0.0, "flush_timeout_s": 2.0, **tier_settings}
    return hhc.PrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode="all", remote=RedisTier(redis_server.url, **tier_settings))


def run(model, cold_model, store, prompt) -> int:
    """Generate `prompt` on `store`, check it equals cold, return the prompt tokens served from the store."""
    cache = hhc.HybridPrefixCache(model, store=store)
    output = generate(model, prompt[None], cache)
    assert_same_as_cold(output, cold_generate(cold_model, prompt[None]))
    store.check_invariants()
    return cache.num_cached_tokens


def test_a_second_store_is_served_from_redis(model, cold_model, redis_server):
    first = shared_store(redis_server)
    assert run(model, cold_model, first, PROMPT) == 0
    first.close()
    second = shared_store(redis_server)
    try:
        assert run(model, cold_model, second, NEXT_TURN) == 96
        assert second.stats()["remote"]["hit_blocks"] == 6
    finally:
        second.close()


def test_a_batch_is_served_from_redis_and_publishes_to_it(model, cold_model, redis_server):
    """A batch on one store publishes its rows (prompts and generated tokens) to Redis; a batch on a second
    store is served every row from there, equal to unpatched batched generate."""
    system = random_tokens(40, seed=3)
    prompts = [torch.cat([system, random_tokens(length, seed=10 + length)]) for length in (30, 45, 60)]
    input_ids = torch.zeros(3, 100, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, 100 - len(prompt) :], mask[row, 100 - len(prompt) :] = prompt, 1
    cold = cold_generate(cold_model, input_ids, attention_mask=mask)
    served = []
    for _ in range(2):
        store = shared_store(redis_server)
        try:
            cache = hhc.HybridPrefixCache(model, store=store)
            assert torch.equal(generate(model, input_ids, cache, attention_mask=mask).sequences, cold.sequences)
            store.check_invariants()
            served.append(cache.cached_tokens_per_row)
        finally:
            store.close()
    # First store: the system prompt's last boundary (32) serves the second and third rows; second store:
    # every row from Redis, to its last boundary before its final token (mode all).
    assert served == [[0, 32, 32], [64, 80, 96]]


FRESH_PROCESS = """
import sys, torch
sys.path.insert(0, {tests!r})
import hf_hybrid_cache as hhc
from cold_oracle import assert_same_as_cold, cold_generate, generate, random_tokens
from hf_hybrid_cache.tiny import tiny_qwen3_next
model = hhc.patch(tiny_qwen3_next(seed=0))
store = hhc.PrefixStore(block_size={block_size}, mamba_cache_mode="all", remote={url!r})
prompt = torch.cat([random_tokens(100, seed=1), random_tokens(20, seed=2)])
cache = hhc.HybridPrefixCache(model, store=store)
output = generate(model, prompt[None], cache)
assert_same_as_cold(output, cold_generate(tiny_qwen3_next(seed=0), prompt[None]))
store.close()
print("cached", cache.num_cached_tokens)
"""


def test_a_fresh_process_is_served_from_redis(model, cold_model, redis_server):
    first = shared_store(redis_server)
    run(model, cold_model, first, PROMPT)
    first.close()
    script = FRESH_PROCESS.format(tests=str(Path(__file__).resolve().parent.parent), block_size=BLOCK_SIZE,
                                  url=redis_server.url)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "cached 96"


def _garbage(redis_server):
    client = redis_server.client()
    for key in client.keys("hhc:*"):
        client.set(key, b"\x00" * 64)


def _full(redis_server):
    client = redis_server.client()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", client.info("memory")["used_memory"] + 1024)


# fault -> (how to cause it, prompt tokens Redis still serves after it)
FAULTS = {
    "killed": (lambda server: server.kill(), 0),
    "garbage": (_garbage, 0),
    "flushed": (lambda server: server.client().flushall(), 0),
    "full": (_full, 96),  # a full server refuses writes and still serves what it holds
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faults_leave_outputs_equal_to_cold(model, cold_model, redis_server, fault):
    cause, still_served = FAULTS[fault]
    first = shared_store(redis_server)
    run(model, cold_model, first, PROMPT)
    first.close()
    second = shared_store(redis_server)
    try:
        cause(redis_server)
        assert run(model, cold_model, second, NEXT_TURN) == still_served
        assert run(model, cold_model, second, NEXT_TURN) == 112  # the local tier serves what it computed
    finally:
        second.close()


def test_a_server_killed_during_a_request_never_reaches_generate(model, cold_model, redis_server):
    store = shared_store(redis_server)
    killed = []

    def kill_at_first_step(module, args):
        if not killed:
            redis_server.kill()
            killed.append(True)

    handle = model.model.layers[0].register_forward_pre_hook(kill_at_first_step)
    try:
        run(model, cold_model, store, PROMPT)  # its writes meet a dead server
    finally:
        handle.remove()
        store.close()
    assert killed and store.remote.stats()["writes"] == 0


@pytest.mark.parametrize("stall", ["debug-sleep", "client-pause"])
def test_a_stalled_server_is_a_miss(model, cold_model, redis_server, stall):
    first = shared_store(redis_server)
    run(model, cold_model, first, PROMPT)
    first.close()
    second = shared_store(redis_server)
    try:
        if stall == "client-pause":
            redis_server.client().execute_command("CLIENT", "PAUSE", "1500", "ALL")
            assert run(model, cold_model, second, NEXT_TURN) == 0
        else:
            with socket.create_connection(("127.0.0.1", redis_server.port)) as raw:
                raw.sendall(b"DEBUG SLEEP 2\r\n")  # the server sleeps; its reply comes when it wakes
                with pytest.raises(redis.exceptions.TimeoutError):  # asleep now
                    redis_server.client(timeout_s=0.1).ping()
                assert run(model, cold_model, second, NEXT_TURN) == 0
                assert raw.recv(16).startswith(b"+OK")
        assert second.stats()["remote"]["errors"] >= 1
    finally:
        second.close()
