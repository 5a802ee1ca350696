"""`python -m hf_hybrid_cache.serve MODEL --continuous-batching` driven by concurrent `openai` clients: four
two-turn chats at once (two streaming) get the replies plain sequential `transformers serve` gives, each
second turn reports cached tokens, and a client that disconnects mid-stream leaves the others correct and
the server serving. On the store as the sequential server: two replicas share one real redis-server, a
restart keeps `--store`, and a dead Redis changes no reply. Every server is stopped whatever happens."""

import sys
import threading
import time

import openai
import pytest
from server_support import free_port, running_servers, start, stop_process_group, wait_until_up

from hf_hybrid_cache.tiny import tiny_byte_tokenizer, tiny_qwen3_next

SYSTEM = "You are a terse assistant. Answer in one line. " * 12  # ~600 byte-level tokens
BLOCK = 32
SERVE_CB = [sys.executable, "-m", "hf_hybrid_cache.serve", "--continuous-batching", "--cache-block-size", str(BLOCK),
            "--cache-max-bytes-mib", "64"]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """(model directory, client of our continuous-batching server, client of plain sequential serving)."""
    model_dir = tmp_path_factory.mktemp("tiny-qwen3-next-cb")
    tiny_qwen3_next(seed=0).save_pretrained(model_dir)
    tiny_byte_tokenizer().save_pretrained(model_dir)
    commands = [
        SERVE_CB[:3] + [str(model_dir)] + SERVE_CB[3:],
        [sys.executable, "-m", "transformers.cli.transformers", "serve", str(model_dir)],
    ]
    with running_servers(commands, model_dir.parent, "cb-server") as ports:
        yield str(model_dir), *(openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                                              timeout=300) for port in ports)


def reply(client, model, messages, stream: bool) -> tuple[str, object]:
    """(reply text, usage), streamed or not."""
    kwargs = dict(model=model, messages=messages, max_tokens=8, temperature=0)
    if not stream:
        response = client.chat.completions.create(**kwargs)
        return response.choices[0].message.content, response.usage
    text, usage = "", None
    for chunk in client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        usage = chunk.usage or usage
    return text, usage


def in_threads(functions) -> list:
    """Run the functions at once; their results in order, re-raising the first failure."""
    results, errors = [None] * len(functions), []

    def run(i, function):
        try:
            results[i] = function()
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(functions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def test_four_concurrent_chats_equal_sequential_serving(servers):
    model, ours, plain = servers
    chats = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Question number {i}?"}]
             for i in range(4)]
    for turn in range(2):
        replies = in_threads([lambda m=messages, i=i: reply(ours, model, m, stream=i % 2 == 0)
                              for i, messages in enumerate(chats)])
        for i, (messages, (text, usage)) in enumerate(zip(chats, replies)):
            expected, expected_usage = reply(plain, model, messages, stream=i % 2 == 0)
            assert text == expected
            assert usage.prompt_tokens == expected_usage.prompt_tokens > 600
            if turn == 1:  # the first turn, up to its last block boundary before its final token
                assert usage.prompt_tokens_details.cached_tokens > 600 - BLOCK
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "And then?"}]


def test_a_client_disconnecting_mid_stream_leaves_the_others_correct(servers):
    model, ours, plain = servers
    leaving = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Talk for a long time."}]
    staying = [[{"role": "system", "content": "Be brief. " * 20}, {"role": "user", "content": f"Stay {i}."}]
               for i in range(3)]

    def disconnect_after_two_chunks():
        stream = ours.chat.completions.create(model=model, messages=leaving, max_tokens=400, temperature=0, stream=True)
        for number, _ in enumerate(stream):
            if number == 2:
                stream.response.close()
                return number

    results = in_threads([disconnect_after_two_chunks] + [lambda m=m: reply(ours, model, m, stream=True) for m in staying])
    assert results[0] == 2
    for messages, (text, _) in zip(staying, results[1:]):
        assert text == reply(plain, model, messages, stream=True)[0]
    # Still serving, and the cancelled request's slot is back: a request after it is answered correctly.
    assert reply(ours, model, leaving, stream=False)[0] == reply(plain, model, leaving, stream=False)[0]


def test_a_request_too_long_for_the_cache_fails_alone(servers):
    """A request the whole cache cannot hold is refused with an error; the engine keeps serving the others
    (transformers would otherwise stop its loop and fail every request)."""
    model, ours, plain = servers
    messages = [{"role": "user", "content": "Write forever."}]
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as error:
            ours.chat.completions.create(model=model, messages=messages, max_tokens=10**7, temperature=0, stream=stream)
        assert "--cache-max-bytes-mib" in error.value.response.text
    assert reply(ours, model, messages, stream=False)[0] == reply(plain, model, messages, stream=False)[0]


def client_on(port: int) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300)


def test_two_replicas_share_the_system_prompt_through_redis(servers, redis_server, tmp_path):
    """Replica B's first chat under the system prompt replica A served is served it from Redis; with Redis
    killed, B's next reply is still plain serving's."""
    model, _, plain = servers
    command = SERVE_CB[:3] + [model, "--remote", redis_server.url] + SERVE_CB[3:]
    with running_servers([command, command], tmp_path, "cb-replica") as ports:
        replica_a, replica_b = (client_on(port) for port in ports)
        on_a = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Asked on A."}]
        text, usage = reply(replica_a, model, on_a, stream=False)
        assert text == reply(plain, model, on_a, stream=False)[0] and usage.prompt_tokens_details.cached_tokens == 0
        # A writes off the request path: wait until its blocks are in Redis before asking B.
        client, deadline = redis_server.client(), time.monotonic() + 60
        while len(client.keys("hhc:p:*")) < (usage.prompt_tokens - 20) // BLOCK and time.monotonic() < deadline:
            time.sleep(0.1)
        on_b = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Asked on B."}]
        text, usage = reply(replica_b, model, on_b, stream=True)
        assert text == reply(plain, model, on_b, stream=True)[0]
        assert usage.prompt_tokens_details.cached_tokens > 600 - BLOCK  # the system prompt, from A's blocks
        redis_server.kill()
        on_b_again = [{"role": "system", "content": "Another system prompt. " * 10}, {"role": "user", "content": "B?"}]
        assert reply(replica_b, model, on_b_again, stream=False)[0] == reply(plain, model, on_b_again, stream=False)[0]


def test_store_flag_keeps_the_store_across_restarts(servers, tmp_path):
    model = servers[0]
    path, port = tmp_path / "cb-store.safetensors", free_port()
    command = SERVE_CB[:3] + [model, "--store", str(path)] + SERVE_CB[3:]
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Remember this."}]
    for run in range(2):
        log = tmp_path / f"cb-run-{run}.log"
        process = start(command, port, log)
        try:
            wait_until_up(process, port, log)
            _, usage = reply(client_on(port), model, messages, stream=False)
        finally:
            stop_process_group(process)
        # Saved after the response: the restarted server is served this chat from the file.
        assert path.exists() and (run == 0) == (usage.prompt_tokens_details.cached_tokens == 0)
    assert "loaded" in (tmp_path / "cb-run-1.log").read_text()
