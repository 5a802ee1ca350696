"""`ChatEngine` in process, without Gradio: streaming, the figures it reports, and store swaps."""

import pytest

import hf_hybrid_cache as hhc
from demo.engine import ChatEngine
from demo.loader import load_model
from hf_hybrid_cache.tiny import tiny_byte_tokenizer, tiny_qwen3_next

pytest.importorskip("pandas", reason="the demo needs the [demo] extra: pip install -e '.[demo]'")
from demo.panels import store_markdown, turn_line  # noqa: E402

PROMPT = "A prefix cache serves the repeated start of a prompt from memory. " * 3


@pytest.fixture(scope="module")
def engine():
    return ChatEngine(load_model(tiny_size="test"), max_bytes=64 << 20)


def _run(engine, prompt: str, prefix_cache: bool = True):
    updates = list(engine.stream(engine.text_prompt_ids(prompt), max_new_tokens=4, prefix_cache=prefix_cache))
    *partials, (reply, stats) = updates
    assert all(update_stats is None for _, update_stats in partials)
    return reply, stats


def test_stream_yields_each_token_then_the_stats(engine):
    engine.configure_store("all", 16)
    updates = list(engine.stream(engine.text_prompt_ids(PROMPT), max_new_tokens=4))
    stats = updates[-1][1]
    assert len(updates) == stats.new_tokens + 1  # one update per token, then the stats
    assert stats.prompt_tokens == len(engine.text_prompt_ids(PROMPT))
    assert stats.cached_tokens == 0 and stats.computed_tokens == stats.prompt_tokens
    assert stats.ttft_s > 0 and (stats.mode, stats.block_size) == ("all", 16)
    assert f"cached {stats.cached_tokens}" in turn_line(stats)


@pytest.mark.parametrize("mode", ["align", "all"])
def test_a_continuation_hits_and_answers_like_a_cold_run(engine, mode):
    engine.configure_store(mode, 16)
    reply, _ = _run(engine, PROMPT)
    continued = PROMPT + reply + " And then?"
    hit_reply, hit = _run(engine, continued)
    cold_reply, cold = _run(engine, continued, prefix_cache=False)
    assert 0 < hit.cached_tokens < hit.prompt_tokens and hit.prefix_cache
    assert cold.cached_tokens == 0 and not cold.prefix_cache
    assert hit_reply == cold_reply
    assert "hit rate" in store_markdown(engine.store_stats())


def test_configure_store_swaps_only_on_a_change(engine):
    engine.configure_store("align", 32)
    store = hhc.get_default_store()
    engine.configure_store("align", 32)
    assert hhc.get_default_store() is store
    engine.configure_store("none", 32)
    assert hhc.get_default_store() is not store
    assert engine.store_stats()["mamba_cache_mode"] == "none"


def test_empty_prompt_is_refused(engine):
    with pytest.raises(ValueError, match="empty"):
        next(engine.stream([], max_new_tokens=4))


def test_model_flag_loads_a_saved_checkpoint(tmp_path):
    # What `--model PATH` does, offline: a checkpoint and tokenizer saved by save_pretrained.
    tiny_qwen3_next(seed=1).save_pretrained(tmp_path)
    tiny_byte_tokenizer().save_pretrained(tmp_path)
    engine = ChatEngine(load_model(str(tmp_path)), max_bytes=16 << 20)
    engine.configure_store("all", 16)
    messages = [{"role": "system", "content": "Be brief. " * 4}, {"role": "user", "content": "Hi?"}]
    *_, (_, stats) = engine.stream(engine.chat_prompt_ids(messages), max_new_tokens=2)
    assert engine.loaded.name == str(tmp_path)
    assert stats.prompt_tokens == len(engine.chat_prompt_ids(messages)) and stats.new_tokens >= 1


def test_store_flag_keeps_the_store_across_restarts(tmp_path):
    # What `--store PATH` does: the first engine saves after each reply, a restarted one loads the file.
    path = tmp_path / "demo-store.safetensors"
    first = ChatEngine(load_model(tiny_size="test"), max_bytes=16 << 20, store_path=path)
    assert not first.load_store()  # no file yet
    first.configure_store("all", 16)
    reply, _ = _run(first, PROMPT)
    assert path.exists() and f"`{path}`" in store_markdown(first.store_stats())

    hhc.set_default_store(None)  # a new process starts with an empty default store
    restarted = ChatEngine(load_model(tiny_size="test"), max_bytes=16 << 20, store_path=path)
    assert restarted.load_store()
    hit_reply, hit = _run(restarted, PROMPT + reply + " And then?")
    cold_reply, _ = _run(restarted, PROMPT + reply + " And then?", prefix_cache=False)
    assert hit.cached_tokens > 0 and hit_reply == cold_reply

    wrong_shape = ChatEngine(load_model(tiny_size="demo"), max_bytes=16 << 20, store_path=path)
    with pytest.raises(ValueError, match="saved for another model"):
        wrong_shape.load_store()


def test_engines_sharing_a_redis_serve_each_others_chats(redis_server):
    """Two demo engines (two processes in real use) on one Redis: the second is served the first's prompt."""
    first, second = (ChatEngine(load_model(tiny_size="test"), max_bytes=64 << 20, remote=redis_server.url)
                     for _ in range(2))
    first.configure_store("all", 16)
    _run(first, PROMPT)
    store = hhc.get_default_store()
    assert store.remote is not None and store.remote.flush(timeout_s=30)
    hhc.set_default_store(hhc.PrefixStore(block_size=16, mamba_cache_mode="all", max_bytes=64 << 20))
    second.configure_store("all", 16)  # a new store with the same Redis and nothing local
    assert hhc.get_default_store().stats()["blocks"] == 0
    _, stats = _run(second, PROMPT)
    assert stats.cached_tokens > 0 and hhc.get_default_store().stats()["remote"]["hit_blocks"] > 0
    hhc.get_default_store().close()
    store.close()
