"""The demo's default chat, in process: time to first token per turn with the prefix cache on and off.

    .venv/bin/python benchmarks/demo_chat.py [--turns 4] [--rounds 3] [--tiny-size demo]

Runs `demo.engine.ChatEngine` over the demo's default model and system prompt, as the page does: each round
a chat with the cache off, then the same chat (same messages, same replies: greedy) with it on, in a fresh
store after a first chat that put the system prompt in it. Prints medians per turn and their ratio, the
figures the page's plot shows.
"""

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hf_hybrid_cache as hhc  # noqa: E402
from demo.engine import ChatEngine  # noqa: E402
from demo.loader import TINY_SIZES, load_model  # noqa: E402
from demo.ui import DEFAULT_SYSTEM_PROMPT  # noqa: E402

QUESTIONS = ["What is a block?", "And a snapshot?", "Why keep both?", "What evicts first?", "Is it exact?"]


def chat(engine: ChatEngine, turns: int, prefix_cache: bool, max_new_tokens: int) -> list:
    messages, stats = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}], []
    for question in QUESTIONS[:turns]:
        messages.append({"role": "user", "content": question})
        *_, (reply, turn) = engine.stream(engine.chat_prompt_ids(messages), max_new_tokens, prefix_cache)
        messages.append({"role": "assistant", "content": reply})
        stats.append(turn)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tiny-size", choices=list(TINY_SIZES), default="demo")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="the demo's default reply cap")
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--mode", default="all")
    args = parser.parse_args()
    engine = ChatEngine(load_model(tiny_size=args.tiny_size), max_bytes=256 << 20)
    engine.warm_up()
    off, on = [], []
    for _ in range(args.rounds):
        hhc.set_default_store(None)
        engine.configure_store(args.mode, args.block_size)
        off.append(chat(engine, args.turns, False, args.max_new_tokens))
        chat(engine, 1, True, args.max_new_tokens)  # an earlier chat: the system prompt is in the store
        on.append(chat(engine, args.turns, True, args.max_new_tokens))
    size = TINY_SIZES[args.tiny_size]
    print(f"demo chat, tiny Qwen3-Next {size['num_hidden_layers']} layers hidden {size['hidden_size']}, mode {args.mode}, "
          f"block {args.block_size}, {args.rounds} rounds (medians)\n")
    print(f"{'turn':>4s}{'prompt':>8s}{'cached':>8s}{'TTFT off ms':>13s}{'TTFT on ms':>12s}{'off / on':>10s}")
    for turn in range(args.turns):
        ttft_off = statistics.median(run[turn].ttft_s for run in off) * 1000
        ttft_on = statistics.median(run[turn].ttft_s for run in on) * 1000
        print(f"{turn + 1:>4d}{on[0][turn].prompt_tokens:>8d}{on[0][turn].cached_tokens:>8d}"
              f"{ttft_off:>13.1f}{ttft_on:>12.1f}{ttft_off / ttft_on:>9.2f}x")


if __name__ == "__main__":
    main()
