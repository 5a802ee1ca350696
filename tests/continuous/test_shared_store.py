"""Continuous batching on the `PrefixStore` that `generate()` uses (`hf_hybrid_cache/continuous/store_link.py`): a
fresh engine, a replica on another store sharing a real redis-server, a restart on a store file and a
`generate()` call are served each other's blocks; namespaces stay apart; a dead, garbage or paused Redis, a
remote that hangs and a load that fails change no reply and never hold up the engine. Every reply equals a cold
`generate` of its prompt alone on an unpatched copy."""

import threading

import pytest
import torch
from batching_support import Session, cold_tokens, prompts_sharing, store
from cold_oracle import assert_same_as_cold, cold_generate, generate, random_tokens

import hf_hybrid_cache as hhc
from hf_hybrid_cache import seams
from hf_hybrid_cache.store.redis_tier import RedisTier
from hf_hybrid_cache.store.remote import RemoteBlock, RemoteTier
from hf_hybrid_cache.tiny import tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the Redis tier warns on each fault
# A 75-token first prompt saves its state at 64 (branch and align: its last boundary before its final token);
# the next prompts share its first 70 tokens, so a store holding it serves them 64.
FIRST, *NEXT = prompts_sharing(70, [5, 30, 17, 41, 9], seed=21)
SERVED = 64


def run(model, cold_model, prompts, **session_settings) -> list[int]:
    """Run `prompts` together on a new engine; check each equals cold; the prompt tokens each was served."""
    session = Session(model, **session_settings)
    try:
        outputs = session.run(prompts)
        for prompt, output in zip(prompts, outputs):
            assert output.error is None and output.generated_tokens == cold_tokens(cold_model, prompt)
        assert session.store.stats()["pinned_blocks"] == 0
        session.store.check_invariants()
        return [session.cache.cached_tokens.get(output.request_id, 0) for output in outputs]
    finally:
        session.close()


def shared(redis_server, **tier_settings) -> hhc.PrefixStore:
    tier_settings = {"timeout_s": 0.2, "first_backoff_s": 0.0, "flush_timeout_s": 5.0, **tier_settings}
    return store(remote=RedisTier(redis_server.url, **tier_settings))


def test_a_fresh_engine_is_served_the_blocks_its_store_holds(model, cold_model):
    """The second engine's paged K/V is empty: the hit's pages are copied in from the store."""
    prefix_store = store()
    assert run(model, cold_model, [FIRST], store=prefix_store) == [0]
    assert run(model, cold_model, NEXT[:3], store=prefix_store) == [SERVED] * 3


def test_generate_and_continuous_batching_serve_each_other(model, cold_model):
    serve_each_other(model, cold_model)


@pytest.mark.skipif(not seams.CB_PAGES_LATENT_ATTENTION, reason="transformers 5.24's engine does not page latent attention")
def test_latent_attention_pages_serve_both_engines():
    """Kimi-Linear: KDA states beside latent-attention (MLA) layers, whose engine pages hold a latent row per token
    where `generate()`'s cache holds the latents and rotated keys apart."""
    model, cold_model = hhc.patch(tiny_model("kimi_linear", seed=0)), tiny_model("kimi_linear", seed=0)
    prefix_store = store()
    assert run(model, cold_model, [FIRST], store=prefix_store) == [0]
    assert run(model, cold_model, NEXT[:2], store=prefix_store) == [SERVED] * 2  # pages loaded into a fresh engine
    serve_each_other(model, cold_model)


def serve_each_other(model, cold_model):
    """A prompt `generate()` computed serves continuous batching, and the reverse."""
    prefix_store = store()
    cache = hhc.HybridPrefixCache(model, store=prefix_store)
    assert_same_as_cold(generate(model, torch.tensor([FIRST]), cache), cold_generate(cold_model, torch.tensor([FIRST])))
    assert run(model, cold_model, NEXT[:1], store=prefix_store) == [SERVED]
    # ...and the reverse: a prompt continuous batching computed serves generate().
    first, second = prompts_sharing(70, [10, 20], seed=22)
    assert run(model, cold_model, [first], store=prefix_store) == [0]
    cache = hhc.HybridPrefixCache(model, store=prefix_store)
    assert_same_as_cold(generate(model, torch.tensor([second]), cache), cold_generate(cold_model, torch.tensor([second])))
    assert cache.num_cached_tokens == SERVED


def test_namespaces_never_hit_each_other(model, cold_model):
    prefix_store = store()
    assert run(model, cold_model, [FIRST], store=prefix_store, namespace="tenant-a") == [0]
    assert run(model, cold_model, NEXT[:1], store=prefix_store, namespace="tenant-b") == [0]
    assert run(model, cold_model, NEXT[1:2], store=prefix_store, namespace="tenant-a") == [SERVED]


def test_a_restart_is_served_from_the_store_file(model, cold_model, tmp_path):
    prefix_store = store()
    run(model, cold_model, [FIRST], store=prefix_store)
    prefix_store.save(tmp_path / "store.safetensors")
    restarted = hhc.PrefixStore.load(tmp_path / "store.safetensors")
    assert run(model, cold_model, NEXT[:3], store=restarted) == [SERVED] * 3


def test_replicas_share_prefixes_through_redis(model, cold_model, redis_server):
    """Replica A computes the first prompt; replica B (another store, same Redis) and a `generate()` on a third
    store are served it from Redis."""
    replica_a = shared(redis_server)
    run(model, cold_model, [FIRST], store=replica_a)
    replica_a.close()  # flushes its writes
    replica_b = shared(redis_server)
    try:
        assert run(model, cold_model, NEXT[:3], store=replica_b) == [SERVED] * 3
        assert replica_b.stats()["remote"]["hit_blocks"] >= SERVED // 16
    finally:
        replica_b.close()
    process = shared(redis_server)
    try:
        cache = hhc.HybridPrefixCache(model, store=process)
        prompt = torch.tensor([NEXT[3]])
        assert_same_as_cold(generate(model, prompt, cache), cold_generate(cold_model, prompt))
        assert cache.num_cached_tokens == SERVED
    finally:
        process.close()


def _garbage(redis_server):
    client = redis_server.client()
    for key in client.keys("hhc:*"):
        client.set(key, b"\x00" * 64)


FAULTS = {
    "killed": lambda server: server.kill(),
    "garbage": _garbage,
    "paused": lambda server: server.client().execute_command("CLIENT", "PAUSE", "1500", "ALL"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_redis_faults_change_no_reply(model, cold_model, redis_server, fault):
    replica_a = shared(redis_server)
    run(model, cold_model, [FIRST], store=replica_a)
    replica_a.close()
    replica_b = shared(redis_server)
    try:
        FAULTS[fault](redis_server)
        assert run(model, cold_model, NEXT[:1], store=replica_b) == [0]
        # What it computed meanwhile is in its local tier: the same prompt again is served it.
        assert run(model, cold_model, NEXT[:1], store=replica_b) == [(len(NEXT[0]) - 1) // 16 * 16]
    finally:
        replica_b.close()


class HangingRemote(RemoteTier):
    """A remote tier in memory whose reads hang until `release` is set, while `hanging` (a fault to inject)."""

    def __init__(self):
        self.blocks: dict[bytes, RemoteBlock] = {}
        self.hanging, self.release, self.reads_started = False, threading.Event(), threading.Event()

    def write(self, key, parent_key, page, snapshot):
        self.blocks[key] = RemoteBlock(key, [t.clone() for t in page], None if snapshot is None else [t.clone() for t in snapshot])

    def read_chain(self, keys, needs_snapshot):
        if self.hanging:
            self.reads_started.set()
            self.release.wait(60)
        chain = []
        for key in keys:
            if key not in self.blocks:
                break
            chain.append(self.blocks[key])
        while chain and needs_snapshot and chain[-1].snapshot is None:
            chain.pop()
        return [RemoteBlock(block.key, block.page, block.snapshot if i == len(chain) - 1 else None)
                for i, block in enumerate(chain)]


def test_a_hanging_remote_holds_up_only_the_request_it_reads_for(model, cold_model):
    """The remote tier is read in `add_request`'s thread, never in the engine's loop: while one request's read
    hangs, another runs to the end; once the read returns, the first is served what the remote holds."""
    remote = HangingRemote()
    run(model, cold_model, [FIRST], store=store(remote=remote))  # fills the remote
    session = Session(model, store=store(remote=remote))
    try:
        remote.hanging = True
        hung = {}
        adding = threading.Thread(target=lambda: hung.update(id=session.manager.add_request(NEXT[0])))
        adding.start()
        assert remote.reads_started.wait(60)
        other = random_tokens(40, seed=23).tolist()  # shares nothing: its read finds nothing, once allowed
        remote.hanging = False
        other_id = session.manager.add_request(other)
        result = session.collect([other_id])[other_id]
        assert result.generated_tokens == cold_tokens(cold_model, other)
        assert adding.is_alive()  # still reading while the other request ran to its end
        remote.release.set()
        adding.join(60)
        output = session.collect([hung["id"]])[hung["id"]]
        assert output.generated_tokens == cold_tokens(cold_model, NEXT[0])
        assert session.cache.cached_tokens[hung["id"]] == SERVED
    finally:
        remote.release.set()
        session.close()


class FailingLoadStore(hhc.PrefixStore):
    """Raises once when a hit's pages are read (its blocks are pinned by then)."""

    armed = False

    def read_pages(self, hit):
        if self.armed:
            self.armed = False
            raise RuntimeError("injected")
        return super().read_pages(hit)


def test_a_failed_load_falls_back_to_computing(model, cold_model):
    prefix_store = FailingLoadStore(block_size=16, max_bytes=16 << 20)
    run(model, cold_model, [FIRST], store=prefix_store)
    prefix_store.armed = True
    with pytest.warns(UserWarning, match="loading a prefix from the store failed"):
        assert run(model, cold_model, NEXT[:1], store=prefix_store) == [0]
    assert run(model, cold_model, NEXT[1:3], store=prefix_store) == [SERVED] * 2
