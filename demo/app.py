"""Launches the chat demo: `python demo/app.py [--host 127.0.0.1] [--port 7860] [--model PATH_OR_ID] [--store PATH]`.

Builds (or loads) the model, sets up the process-wide PrefixStore (loaded from `--store` when that file
exists) and serves the page and `/generate` locally; nothing here reaches the internet (no analytics, no
share link, no web fonts).
"""

import argparse
import os
import sys
from pathlib import Path

# `python demo/app.py` puts demo/ on sys.path, not the checkout; demo/ is not part of the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402 - after the analytics switch, which gradio reads on import
import torch  # noqa: E402

from demo.engine import ChatEngine  # noqa: E402
from demo.loader import TINY_SIZES, load_model  # noqa: E402
from demo.ui import BLOCK_SIZES, MODES, build_ui  # noqa: E402

# System fonts only: the default theme would fetch its web font from Google.
OFFLINE_THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--model", default=None, help="a causal LM checkpoint of a supported family (default: the tiny offline Qwen3-Next)")
    parser.add_argument("--seed", type=int, default=0, help="weights of the tiny model")
    parser.add_argument("--tiny-size", choices=list(TINY_SIZES), default="demo", help="size of the tiny model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    # "all" so that a new chat sharing only the system prompt hits too; "align" saves far fewer
    # snapshots (each costs as much as thousands of tokens of K/V on a large model) but only serves
    # requests that continue an earlier one.
    parser.add_argument("--mode", choices=MODES, default="all", help="where GDN states are saved")
    parser.add_argument("--block-size", type=int, default=64, help=f"tokens per block, e.g. {BLOCK_SIZES}")
    parser.add_argument("--max-bytes-mib", type=int, default=256, help="the store's memory budget")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="reply length cap in the chat")
    parser.add_argument(
        "--store", type=Path, default=None,
        help="a file to keep the store in across restarts: loaded at start if it exists (its mode and block "
        "size win over --mode / --block-size), saved after each reply and on exit",
    )
    parser.add_argument("--remote", default=None, help="a Redis URL whose store other processes share (redis://host:6379/0)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    loaded = load_model(args.model, seed=args.seed, device=args.device, tiny_size=args.tiny_size)
    engine = ChatEngine(loaded, max_bytes=args.max_bytes_mib << 20, store_path=args.store, remote=args.remote)
    if not engine.load_store():
        engine.configure_store(args.mode, args.block_size)
    engine.warm_up()
    app = build_ui(engine, max_new_tokens=args.max_new_tokens)
    _, url, _ = app.launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        ssr_mode=False,
        show_error=True,
        theme=OFFLINE_THEME,
        prevent_thread_lock=True,
        quiet=True,
    )
    print(f"hf_hybrid_cache demo: {url} (Ctrl+C to stop)", flush=True)
    try:
        app.block_thread()
    finally:
        engine.save_store()


if __name__ == "__main__":
    main()
