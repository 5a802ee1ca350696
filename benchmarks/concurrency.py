"""Concurrent chat clients against plain `transformers serve`, `python -m hf_hybrid_cache.serve` (sequential
generate with the prefix store) and `python -m hf_hybrid_cache.serve --continuous-batching`: output tokens/s
and time to first token (p50 / p95) at 1, 4 and 8 clients, side by side in one run.

    .venv/bin/python benchmarks/concurrency.py [--clients 1 4 8] [--turns 4] [--max-tokens 32]

Model: the demo's default (a tiny Qwen3-Next, 8 layers, hidden 768, random weights) with the offline byte
tokenizer, saved to a temporary folder. Each client runs a chat of `--turns` streamed turns (the reply sent
back each turn) under a shared ~600-token system prompt, its own questions, greedy. The servers run one at a
time (this machine has 2 cores), each started fresh and warmed with one request. Throughput: completion
tokens of every reply over the wall time from the first request to the last reply; TTFT: from sending a
request to its first content chunk. Every server's replies are checked equal to plain serving's.
"""

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serve import free_port, start_server, streamed_turn  # noqa: E402  (benchmarks/serve.py)

from demo.loader import TINY_SIZES  # noqa: E402
from hf_hybrid_cache.tiny import tiny_byte_tokenizer, tiny_qwen3_next  # noqa: E402

SYSTEM = "You are a terse assistant for a storage team. Answer in one line, no lists. " * 8  # ~600 tokens
QUESTIONS = ["What is a block?", "And a snapshot?", "Why keep both?", "What evicts first?", "Is it exact?"]
SERVERS = {
    "plain transformers serve": ["-m", "transformers.cli.transformers", "serve"],
    "ours, sequential": ["-m", "hf_hybrid_cache.serve"],
    "ours, continuous batching": ["-m", "hf_hybrid_cache.serve", "--continuous-batching"],
}


def run_clients(client, model: str, num_clients: int, turns: int, max_tokens: int) -> dict:
    """Every client's chat at once: {"ttft": [...], "tokens": n, "wall": s, "replies": {(client, turn): text}}."""
    ttfts, replies, tokens, lock = [], {}, [0], threading.Lock()

    def chat(index: int) -> None:
        messages = [{"role": "system", "content": SYSTEM}]
        for turn in range(turns):
            messages.append({"role": "user", "content": f"Client {index}: {QUESTIONS[(index + turn) % len(QUESTIONS)]}"})
            ttft, reply, usage = streamed_turn(client, model, messages, max_tokens)
            messages.append({"role": "assistant", "content": reply})
            with lock:
                ttfts.append(ttft)
                replies[index, turn] = reply
                tokens[0] += usage.completion_tokens

    start = time.perf_counter()
    threads = [threading.Thread(target=chat, args=(i,)) for i in range(num_clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"ttft": ttfts, "tokens": tokens[0], "wall": time.perf_counter() - start, "replies": replies}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as model_dir:
        tiny_qwen3_next(seed=0, **TINY_SIZES["demo"]).save_pretrained(model_dir)
        tiny_byte_tokenizer().save_pretrained(model_dir)
        for name, command in SERVERS.items():
            port = free_port()
            server = start_server([sys.executable, *command, model_dir], port)
            try:
                client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=600)
                streamed_turn(client, model_dir, [{"role": "user", "content": "warm up"}], 4)
                for num_clients in args.clients:
                    results[name, num_clients] = run_clients(client, model_dir, num_clients, args.turns, args.max_tokens)
                    print(f"{name}, {num_clients} clients: done", file=sys.stderr, flush=True)
            finally:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=60)

    plain = "plain transformers serve"
    for (name, num_clients), result in results.items():
        if result["replies"] != results[plain, num_clients]["replies"]:
            raise RuntimeError(f"{name} with {num_clients} clients replied differently from plain serving")
    print(f"{args.turns}-turn streamed chats per client, ~600-token shared system prompt, max_tokens {args.max_tokens}, "
          f"tiny Qwen3-Next ({TINY_SIZES['demo']['num_hidden_layers']} layers, hidden {TINY_SIZES['demo']['hidden_size']}), "
          "replies equal across servers\n")
    print(f"{'server':<28s}{'clients':>8s}{'tokens/s':>10s}{'TTFT p50 ms':>13s}{'TTFT p95 ms':>13s}")
    for (name, num_clients), r in results.items():
        print(f"{name:<28s}{num_clients:>8d}{r['tokens'] / r['wall']:>10.1f}{1000 * percentile(r['ttft'], 50):>13.0f}"
              f"{1000 * percentile(r['ttft'], 95):>13.0f}")
    top = max(args.clients)
    throughput = {name: results[name, top]["tokens"] / results[name, top]["wall"] for name in SERVERS}
    p95 = {name: percentile(results[name, top]["ttft"], 95) for name in SERVERS}
    cb = "ours, continuous batching"
    print(f"\nat {top} clients: continuous batching throughput {throughput[cb] / throughput[plain]:.2f}x plain serve "
          f"(target >= 3), {throughput[cb] / throughput['ours, sequential']:.2f}x ours sequential (target >= 1.5); "
          f"p95 TTFT {p95[cb] / p95[plain]:.2f}x plain serve (target <= 0.5)")


if __name__ == "__main__":
    main()
