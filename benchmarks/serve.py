"""A 6-turn chat through the `openai` client against `python -m hf_hybrid_cache.serve` and plain
`transformers serve`, side by side: time to first token and prompt tokens computed per turn.

    .venv/bin/python benchmarks/serve.py [--turns 6] [--rounds 3] [--hidden-size 768]

Model: the demo's default (a tiny Qwen3-Next, 8 layers, hidden 768, random weights; `--hidden-size` changes
it) with the offline byte tokenizer, saved to a temporary folder; a ~600-token system prompt. Both servers run at once on loopback;
each turn is sent to both, in an order that alternates, so only one computes at a time. TTFT: from sending
the streaming request to its first content chunk. Each round is a new chat with its own system prompt.
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from demo.loader import TINY_SIZES  # noqa: E402
from hf_hybrid_cache.tiny import tiny_byte_tokenizer, tiny_qwen3_next  # noqa: E402

QUESTIONS = ["What is a block?", "And a snapshot?", "Why keep both?", "What evicts first?", "Is it exact?",
             "How much memory?", "Thanks."]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(command: list[str], port: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    for _ in range(480):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{command} did not come up on port {port}")


def streamed_turn(client, model: str, messages: list[dict], max_tokens: int = 16) -> tuple[float, str, object]:
    """(TTFT s, reply, usage) of one greedy streamed turn."""
    start = time.perf_counter()
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    ttft, reply, usage = None, "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            ttft = ttft or time.perf_counter() - start
            reply += chunk.choices[0].delta.content
        usage = chunk.usage or usage
    return ttft, reply, usage


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hidden-size", type=int, default=TINY_SIZES["demo"]["hidden_size"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as model_dir:
        tiny_qwen3_next(seed=0, **{**TINY_SIZES["demo"], "hidden_size": args.hidden_size}).save_pretrained(model_dir)
        tiny_byte_tokenizer().save_pretrained(model_dir)
        ports = free_port(), free_port()
        servers = [
            start_server([sys.executable, "-m", "hf_hybrid_cache.serve", model_dir], ports[0]),
            start_server([sys.executable, "-m", "transformers.cli.transformers", "serve", model_dir], ports[1]),
        ]
        try:
            clients = [openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused") for port in ports]
            streamed_turn(clients[1], model_dir, [{"role": "user", "content": "warm up"}])  # first-call costs
            streamed_turn(clients[0], model_dir, [{"role": "user", "content": "warm up"}])
            results = {turn: {"cached": [], "plain": [], "computed": [], "prompt": []} for turn in range(args.turns)}
            for round_idx in range(args.rounds):
                system = f"Chat {round_idx}. " + "You are a terse assistant. Answer in one line. " * 12
                messages = [{"role": "system", "content": system}]
                for turn in range(args.turns):
                    messages.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
                    order = (0, 1) if (round_idx + turn) % 2 == 0 else (1, 0)
                    out = {i: streamed_turn(clients[i], model_dir, messages) for i in order}
                    if out[0][1] != out[1][1]:
                        raise RuntimeError(f"turn {turn}: the servers replied differently")
                    ttft_cached, reply, usage = out[0]
                    details = usage.prompt_tokens_details
                    prompt_tokens, cached_tokens = usage.prompt_tokens, details.cached_tokens if details else 0
                    results[turn]["cached"].append(ttft_cached)
                    results[turn]["plain"].append(out[1][0])
                    results[turn]["computed"].append(prompt_tokens - cached_tokens)
                    results[turn]["prompt"].append(prompt_tokens)
                    messages.append({"role": "assistant", "content": reply})
        finally:
            for server in servers:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)

    print(f"{args.turns}-turn chats, {args.rounds} rounds (medians), max_tokens 16, tiny Qwen3-Next of "
          f"{TINY_SIZES['demo']['num_hidden_layers']} layers, hidden {args.hidden_size}\n")
    print(f"{'turn':>4s}{'prompt':>8s}{'computed (ours)':>17s}{'TTFT plain ms':>15s}{'TTFT ours ms':>14s}{'plain / ours':>14s}")
    for turn, r in results.items():
        ratio = statistics.median(p / c for p, c in zip(r["plain"], r["cached"]))
        print(f"{turn + 1:>4d}{statistics.median(r['prompt']):>8.0f}{statistics.median(r['computed']):>17.0f}"
              f"{1000 * statistics.median(r['plain']):>15.1f}{1000 * statistics.median(r['cached']):>14.1f}{ratio:>13.2f}x")
    print("\ntarget: from turn 3 on, TTFT >= 3x lower with the cache")


if __name__ == "__main__":
    main()
