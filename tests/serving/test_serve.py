"""`python -m hf_hybrid_cache.serve` against `transformers serve`, both started on free loopback ports with a
tiny model directory saved by the test, and driven by the `openai` client: a chat's second turn is served
its first turn from the store and reports it in `usage`, replies equal the plain server's, and bad requests
get the plain server's errors. Both servers are stopped whatever happens."""

import re
import sys
import time
from pathlib import Path

import openai
import pytest
from server_support import free_port, running_servers, start, stop_process_group, wait_until_up

from hf_hybrid_cache.tiny import save_tiny

README = Path(__file__).resolve().parents[2] / "README.md"
SYSTEM = "You are a terse assistant. Answer in one line. " * 12  # ~600 byte-level tokens


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """(model directory, client of the caching server, client of plain `transformers serve`)."""
    model_dir = tmp_path_factory.mktemp("tiny-qwen3-next")
    save_tiny(model_dir)  # README's recipe: `python -m hf_hybrid_cache.tiny save DIR`
    commands = [
        [sys.executable, "-m", "hf_hybrid_cache.serve", str(model_dir), "--cache-block-size", "32"],
        [sys.executable, "-m", "transformers.cli.transformers", "serve", str(model_dir)],
    ]
    with running_servers(commands, model_dir.parent, "server") as ports:
        clients = [openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0) for port in ports]
        yield str(model_dir), *clients, ports[0]


def chat(client, model, messages, **kwargs):
    return client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0, **kwargs)


def test_second_turn_is_served_from_the_store_with_the_same_reply(servers):
    model, cached, plain, _ = servers
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is a block?"}]
    for turn in range(2):
        ours, theirs = chat(cached, model, messages), chat(plain, model, messages)
        assert ours.choices[0].message.content == theirs.choices[0].message.content
        # The saved generation config keeps the tiny model's replies to printable text, as in the demo.
        assert all(char == "\n" or " " <= char <= "~" for char in ours.choices[0].message.content)
        assert ours.usage.prompt_tokens == theirs.usage.prompt_tokens > 600
        cached_tokens = ours.usage.prompt_tokens_details.cached_tokens
        if turn == 0:
            first_prompt_tokens = ours.usage.prompt_tokens
            assert cached_tokens == 0
        else:
            # The whole first turn, up to its last 32-token boundary, came from the store.
            assert cached_tokens >= first_prompt_tokens // 32 * 32 > 0
        messages += [{"role": "assistant", "content": ours.choices[0].message.content}, {"role": "user", "content": "And?"}]


def test_streaming_reports_cached_tokens(servers):
    model, cached, _, _ = servers
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Stream this."}]
    chat(cached, model, messages)
    chunks = list(chat(cached, model, messages, stream=True, stream_options={"include_usage": True}))
    usage = [chunk.usage for chunk in chunks if chunk.usage is not None]
    assert len(usage) == 1 and usage[0].prompt_tokens_details.cached_tokens > 0


@pytest.mark.parametrize("request_kind", ["unknown-model", "empty-messages"])
def test_bad_requests_get_the_plain_servers_errors(servers, request_kind):
    model, cached, plain, _ = servers
    errors = []
    for client in (cached, plain):
        with pytest.raises(openai.APIStatusError) as error:
            if request_kind == "unknown-model":
                chat(client, model + "-missing", [{"role": "user", "content": "hi"}])
            else:
                chat(client, model, [])
        errors.append((type(error.value), error.value.status_code))
    assert errors[0] == errors[1]


def test_store_flag_keeps_the_store_across_restarts(servers, tmp_path):
    model = servers[0]
    path, port = tmp_path / "served-store.safetensors", free_port()
    command = [sys.executable, "-m", "hf_hybrid_cache.serve", model, "--cache-block-size", "32", "--store", str(path)]
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Remember this."}]
    for run in range(2):
        log = tmp_path / f"run-{run}.log"
        process = start(command, port, log)
        try:
            wait_until_up(process, port, log)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
            reply = chat(client, model, messages)
        finally:
            stop_process_group(process)
        # Saved after the response: the restarted server is served this turn from the file.
        assert path.exists() and (run == 0) == (reply.usage.prompt_tokens_details.cached_tokens == 0)
    assert "loaded" in (tmp_path / "run-1.log").read_text()


def test_readme_client_snippet_runs(servers, capsys):
    model, _, _, port = servers
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    snippet = next(block for block in blocks if "OpenAI(" in block)
    snippet = snippet.replace("http://127.0.0.1:8000/v1", f"http://127.0.0.1:{port}/v1").replace("path/to/model", model)
    exec(compile(snippet, "README.md", "exec"), {})
    lines = capsys.readouterr().out.split("\n")
    first, second = (list(map(int, line.split())) for line in lines[:2])
    assert first[1] == 0 and second[1] > 0 and second[1] <= second[0]


def test_two_replicas_share_one_redis(servers, redis_server, tmp_path):
    """A conversation started on replica A continues on replica B: B is served A's turn from Redis and
    replies as plain serving does."""
    model, _, plain, _ = servers
    command = [sys.executable, "-m", "hf_hybrid_cache.serve", model, "--cache-block-size", "32", "--remote",
               redis_server.url]
    with running_servers([command, command], tmp_path, "replica") as ports:
        replica_a, replica_b = (openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
                                for port in ports)
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Start on A."}]
        first = chat(replica_a, model, messages)
        assert first.choices[0].message.content == chat(plain, model, messages).choices[0].message.content
        messages += [{"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "Continue on B."}]
        # A writes off the request path: wait until its blocks are in Redis before asking B.
        client, deadline = redis_server.client(), time.monotonic() + 60
        while len(client.keys("hhc:p:*")) < first.usage.prompt_tokens // 32 and time.monotonic() < deadline:
            time.sleep(0.1)
        second = chat(replica_b, model, messages)
        assert second.choices[0].message.content == chat(plain, model, messages).choices[0].message.content
        assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens // 32 * 32 > 0
