"""Concurrent chat clients against plain `transformers serve`, `python -m hf_hybrid_cache.serve` (sequential
generate with the prefix store) and `python -m hf_hybrid_cache.serve --continuous-batching`: output tokens/s
and time to first token (p50 / p95) at 1, 4 and 8 clients, side by side in one run. Then replicas: the most
clients split across two continuous-batching replicas on one Redis (`--remote`), vs one replica, vs two
replicas without Redis, with the prompt tokens served from a cache; and how much of its first turn under the
system prompt a fresh replica still computes once another has served it.

    .venv/bin/python benchmarks/concurrency.py [--clients 1 4 8] [--turns 4] [--max-tokens 32] [--no-replicas]
        [--family qwen3_next | nemotron_h | lfm2 | ...]

Model: the demo's default (a tiny Qwen3-Next, 8 layers, hidden 768, random weights) with the offline byte
tokenizer, saved to a temporary folder; with `--family`, that family's tiny config (`hf_hybrid_cache.tiny`: its
layer pattern, e.g. Nemotron-H's Mamba2 / MoE / attention / MLP layers or LFM2's short convs beside attention)
widened to hidden 768. Each client runs a chat of `--turns` streamed turns (the reply sent
back each turn) under a shared ~600-token system prompt, its own questions, greedy. The servers run one at a
time (this machine has 2 cores), each started fresh and warmed with one request; the replicas of one row run
at once on the same cores (Debian's redis-server on a free port for the Redis row), each warmed with one chat
under the system prompt, the second once the first's blocks are in Redis. Throughput: completion tokens of
every reply over the wall time from the first request to the last reply; TTFT: from sending a request to its
first content chunk; cached: `usage.prompt_tokens_details.cached_tokens` over prompt tokens. Every server's
replies are checked equal to plain serving's.
"""

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serve import free_port, start_server, streamed_turn  # noqa: E402  (benchmarks/serve.py)

from demo.loader import TINY_SIZES  # noqa: E402
from hf_hybrid_cache.tiny import tiny_byte_tokenizer, tiny_model, tiny_qwen3_next  # noqa: E402

SYSTEM = "You are a terse assistant for a storage team. Answer in one line, no lists. " * 8  # ~600 tokens
QUESTIONS = ["What is a block?", "And a snapshot?", "Why keep both?", "What evicts first?", "Is it exact?"]
SERVERS = {
    "plain transformers serve": ["-m", "transformers.cli.transformers", "serve"],
    "ours, sequential": ["-m", "hf_hybrid_cache.serve"],
    "ours, continuous batching": ["-m", "hf_hybrid_cache.serve", "--continuous-batching"],
}
CONTINUOUS = SERVERS["ours, continuous batching"]
REPLICA_ROWS = ("1 replica", "2 replicas, no Redis", "2 replicas, one Redis")
# `--family` other than Qwen3-Next: its tiny config at the demo model's width.
WIDER = dict(hidden_size=TINY_SIZES["demo"]["hidden_size"], intermediate_size=2 * TINY_SIZES["demo"]["hidden_size"])


def build_model(family: str):
    """The served model and a line that describes it."""
    if family == "qwen3_next":
        size = TINY_SIZES["demo"]
        return tiny_qwen3_next(seed=0, **size), f"tiny Qwen3-Next ({size['num_hidden_layers']} layers, hidden {size['hidden_size']})"
    model = tiny_model(family, **WIDER)
    return model, f"tiny {family} ({model.config.num_hidden_layers} layers, hidden {WIDER['hidden_size']})"


def run_clients(clients, model: str, num_clients: int, turns: int, max_tokens: int) -> dict:
    """Every client's chat at once, client i on `clients[i % len(clients)]` (a client or a list): {"ttft": [...],
    "tokens": n, "wall": s, "replies": {(client, turn): text}, "prompt_tokens": n, "cached_tokens": n}."""
    clients = clients if isinstance(clients, list) else [clients]
    ttfts, replies, counts, lock = [], {}, dict(tokens=0, prompt_tokens=0, cached_tokens=0), threading.Lock()

    def chat(index: int) -> None:
        messages = [{"role": "system", "content": SYSTEM}]
        for turn in range(turns):
            messages.append({"role": "user", "content": f"Client {index}: {QUESTIONS[(index + turn) % len(QUESTIONS)]}"})
            ttft, reply, usage = streamed_turn(clients[index % len(clients)], model, messages, max_tokens)
            messages.append({"role": "assistant", "content": reply})
            with lock:
                ttfts.append(ttft)
                replies[index, turn] = reply
                counts["tokens"] += usage.completion_tokens
                counts["prompt_tokens"] += usage.prompt_tokens
                details = usage.prompt_tokens_details
                counts["cached_tokens"] += (details.cached_tokens or 0) if details is not None else 0

    start = time.perf_counter()
    threads = [threading.Thread(target=chat, args=(i,)) for i in range(num_clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"ttft": ttfts, "wall": time.perf_counter() - start, "replies": replies, **counts}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


@contextlib.contextmanager
def redis_server():
    """Debian's redis-server on a free loopback port (no persistence), stopped whatever happens; its URL."""
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        client = redis.Redis(port=port)
        for _ in range(200):
            with contextlib.suppress(redis.exceptions.ConnectionError):
                client.ping()
                break
            time.sleep(0.025)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def replicas(model_dir: str, num_replicas: int, remote: str | None):
    """`num_replicas` continuous-batching servers started at once (on `remote` if given); their clients."""
    extra = ["--remote", remote] if remote else []
    ports = [free_port() for _ in range(num_replicas)]
    servers = []
    try:
        for port in ports:
            servers.append(start_server([sys.executable, *CONTINUOUS, model_dir, *extra], port))
        yield [openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=600) for port in ports]
    finally:
        for server in servers:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)


def first_turn(client, model: str) -> object:
    """The usage of one chat's first turn under the system prompt."""
    return streamed_turn(client, model, [{"role": "system", "content": SYSTEM},
                                         {"role": "user", "content": "Warm up on this replica."}], 4)[2]


def replica_rows(model_dir: str, num_clients: int, turns: int, max_tokens: int) -> tuple[dict, dict]:
    """The replica rows' results, and per row of two replicas the second one's warm-up first turn: "computed /
    prompt tokens"."""
    results, fresh = {}, {}
    for row in REPLICA_ROWS:
        num_replicas = 1 if row == "1 replica" else 2
        with contextlib.ExitStack() as stack:
            remote = stack.enter_context(redis_server()) if "Redis" in row and "no" not in row else None
            clients = stack.enter_context(replicas(model_dir, num_replicas, remote))
            first_turn(clients[0], model_dir)
            if remote is not None:  # the first replica writes off its requests' path: wait for its blocks
                keys, deadline = redis.Redis.from_url(remote), time.monotonic() + 60
                while len(keys.keys("hhc:p:*")) < 600 // 64 and time.monotonic() < deadline:
                    time.sleep(0.1)
            if num_replicas > 1:
                usage = first_turn(clients[-1], model_dir)
                fresh[row] = f"{usage.prompt_tokens - (usage.prompt_tokens_details.cached_tokens or 0)} / {usage.prompt_tokens}"
            results[row] = run_clients(clients, model_dir, num_clients, turns, max_tokens)
            print(f"{row}, {num_clients} clients: done", file=sys.stderr, flush=True)
    return results, fresh


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--no-replicas", action="store_true", help="skip the replica rows")
    parser.add_argument("--family", default="qwen3_next", help="a tiny family of hf_hybrid_cache.tiny (default qwen3_next)")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as model_dir:
        model, description = build_model(args.family)
        model.save_pretrained(model_dir)
        tiny_byte_tokenizer().save_pretrained(model_dir)
        for name, command in SERVERS.items():
            port = free_port()
            server = start_server([sys.executable, *command, model_dir], port)
            try:
                client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=600)
                streamed_turn(client, model_dir, [{"role": "user", "content": "warm up"}], 4)
                for num_clients in args.clients:
                    results[name, num_clients] = run_clients(client, model_dir, num_clients, args.turns,
                                                             args.max_tokens)
                    print(f"{name}, {num_clients} clients: done", file=sys.stderr, flush=True)
            finally:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=60)
        top = max(args.clients)
        if not args.no_replicas:
            replica_results, fresh = replica_rows(model_dir, top, args.turns, args.max_tokens)

    plain = "plain transformers serve"
    for (name, num_clients), result in results.items():
        if result["replies"] != results[plain, num_clients]["replies"]:
            raise RuntimeError(f"{name} with {num_clients} clients replied differently from plain serving")
    print(f"{args.turns}-turn streamed chats per client, ~600-token shared system prompt, max_tokens {args.max_tokens}, "
          f"{description}, replies equal across servers\n")
    print(f"{'server':<28s}{'clients':>8s}{'tokens/s':>10s}{'TTFT p50 ms':>13s}{'TTFT p95 ms':>13s}")
    for (name, num_clients), r in results.items():
        print(f"{name:<28s}{num_clients:>8d}{r['tokens'] / r['wall']:>10.1f}{1000 * percentile(r['ttft'], 50):>13.0f}"
              f"{1000 * percentile(r['ttft'], 95):>13.0f}")
    throughput = {name: results[name, top]["tokens"] / results[name, top]["wall"] for name in SERVERS}
    p95 = {name: percentile(results[name, top]["ttft"], 95) for name in SERVERS}
    cb = "ours, continuous batching"
    print(f"\nat {top} clients: continuous batching throughput {throughput[cb] / throughput[plain]:.2f}x plain serve "
          f"(target >= 3), {throughput[cb] / throughput['ours, sequential']:.2f}x ours sequential (target >= 1.5); "
          f"p95 TTFT {p95[cb] / p95[plain]:.2f}x plain serve (target <= 0.5)")
    if args.no_replicas:
        return
    for row, result in replica_results.items():
        if result["replies"] != results[plain, top]["replies"]:
            raise RuntimeError(f"{row} replied differently from plain serving")
    print(f"\n{top} clients on continuous-batching replicas (client i on replica i % replicas), replies equal plain serving\n")
    print(f"{'setup':<24s}{'tokens/s':>10s}{'TTFT p50 ms':>13s}{'TTFT p95 ms':>13s}{'cached':>9s}"
          f"{'fresh replica first turn: computed / prompt':>46s}")
    for row, r in replica_results.items():
        print(f"{row:<24s}{r['tokens'] / r['wall']:>10.1f}{1000 * percentile(r['ttft'], 50):>13.0f}"
              f"{1000 * percentile(r['ttft'], 95):>13.0f}{r['cached_tokens'] / r['prompt_tokens']:>9.0%}"
              f"{fresh.get(row, '-'):>46s}")


if __name__ == "__main__":
    main()
