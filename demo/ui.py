"""The Gradio page: chat, controls, the store panel and the time-to-first-token plot, plus `/generate`.

Layout and event wiring only; generation and measurement live in `demo.engine`.
"""

import html

import gradio as gr

from demo.engine import ChatEngine
from demo.panels import store_markdown, ttft_frame, turn_line, turn_order

MODES = ["none", "align", "branch", "all"]
BLOCK_SIZES = [16, 32, 64, 128, 256]
# As long as real system prompts often are (~1k tokens with the byte tokenizer), so that a new chat with
# the same system prompt has something to hit and the plot shows what reuse saves.
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant in a demo of prefix caching for hybrid linear-attention models. "
    "Every request renders the whole conversation again: this system prompt, then each user message and "
    "each reply. A prefix cache keeps the attention keys and values of that repeated beginning in fixed-size "
    "blocks, together with the Gated DeltaNet states at block boundaries, so the model only computes what "
    "is new. Answer briefly.\n\n"
    "Rules for every answer. Be exact: when a figure is asked for, give the figure and say how it was "
    "measured. Be brief: two or three sentences unless the user asks for more. Prefer plain words to jargon; "
    "when a term is needed (block, page, snapshot, eviction, tier), explain it in one clause the first time. "
    "Never invent a measurement, a version number or a citation. When you do not know, say so and say what "
    "would settle it. When a question mixes two things, answer them one at a time. When the user writes in "
    "another language, answer in that language. Keep code short and runnable, with its imports."
)
HELP = (
    "**Prefix cache** off runs plain `generate()`. **Mode** says where Gated DeltaNet states are saved; a "
    "hit needs one at its block boundary. `none`: never, so no hits. `align`: at the last block boundary "
    "of each request, so a conversation's next turn hits but a new chat does not. `branch`: as align, plus "
    "where a prompt leaves what is cached, so the next chat sharing that prefix hits. `all`: at every "
    "boundary, so a new chat with the same system prompt hits too. Mode and **block size** belong to the "
    "store every tab shares: changing either starts an empty store. **New chat** keeps the store."
)


def as_text(text: str) -> str:
    """Chat content shown as the characters it is: the chat puts messages in the page as HTML, where a model's
    `<?` or `<!--` would open a comment that swallows the rest of the reply and its figures line."""
    return html.escape(text, quote=False)


def build_ui(engine: ChatEngine, max_new_tokens: int) -> gr.Blocks:
    """The page over `engine`; chat replies stop after `max_new_tokens`."""

    def respond(message, chatbot, history, log, system_prompt, prefix_cache):
        if not message.strip():
            return
        system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
        user = {"role": "user", "content": message}
        prompt_ids = engine.chat_prompt_ids(system + history + [user])
        chatbot = chatbot + [{"role": "user", "content": as_text(message)}, {"role": "assistant", "content": ""}]
        for reply, stats in engine.stream(prompt_ids, max_new_tokens, prefix_cache):
            if stats is None:
                chatbot[-1] = {"role": "assistant", "content": as_text(reply)}
                yield chatbot, "", gr.skip(), gr.skip(), gr.skip(), gr.skip()
        chatbot[-1] = {"role": "assistant", "content": f"{as_text(reply)}\n\n{turn_line(stats)}"}
        # The history keeps the bare reply: the stats line must not flow into the next prompt.
        history = history + [user, {"role": "assistant", "content": reply}]
        series = f"chat {log['chat']} · cache {'on' if prefix_cache else 'off'}"
        point = {"turn": len(history) // 2, "ttft_ms": stats.ttft_s * 1000, "series": series}
        log = {**log, "rows": log["rows"] + [point]}
        # Headroom above the slowest turn, so its point is not drawn on the border.
        top = 1.15 * max(row["ttft_ms"] for row in log["rows"])
        plot = gr.ScatterPlot(ttft_frame(log["rows"]), sort=turn_order(log["rows"]), y_lim=[0, top])
        yield chatbot, "", history, log, store_markdown(engine.store_stats()), plot

    def new_chat(log):
        return [], [], {**log, "chat": log["chat"] + 1}, ""

    def configure(mode, block_size):
        engine.configure_store(mode, int(block_size))
        return store_markdown(engine.store_stats())

    def current_settings():
        stats = engine.store_stats()
        return stats["mamba_cache_mode"], stats["block_size"], store_markdown(stats)

    def generate(prompt: str, max_new_tokens: int) -> tuple[str, dict]:
        """Complete raw `prompt` (no chat template) through the process-wide store; returns the
        text and its stats (prompt_tokens, cached_tokens, computed_tokens, ttft_s, tokens_per_s, ...)."""
        for reply, stats in engine.stream(engine.text_prompt_ids(prompt), int(max_new_tokens)):
            pass
        return reply, stats.as_dict()

    with gr.Blocks(title="hf_hybrid_cache chat demo") as app:
        gr.Markdown(f"## Prefix caching for hybrid models\n{engine.loaded.notice}")
        with gr.Row():
            with gr.Column(scale=3):
                # Raw text: the tiny model's random punctuation would otherwise render as markdown.
                chatbot = gr.Chatbot(
                    elem_id="chat", height=440, label="Chat", buttons=[], render_markdown=False
                )
                with gr.Row():
                    message = gr.Textbox(
                        placeholder="Type a message and press Enter",
                        show_label=False,
                        elem_id="message",
                        scale=5,
                    )
                    send = gr.Button("Send", variant="primary", elem_id="send", scale=1)
                new_chat_button = gr.Button("New chat (keeps the store)", elem_id="new-chat")
                system_prompt = gr.Textbox(
                    DEFAULT_SYSTEM_PROMPT, label="System prompt", lines=3, elem_id="system-prompt"
                )
            with gr.Column(scale=2):
                prefix_cache = gr.Checkbox(value=True, label="Prefix cache", elem_id="prefix-cache")
                with gr.Row():
                    mode = gr.Radio(MODES, label="Mode (whole store)", elem_id="mode")
                    block_size = gr.Dropdown(BLOCK_SIZES, label="Block size (whole store)", elem_id="block-size")
                store_panel = gr.Markdown(elem_id="store")
                # Points, not lines: a line plot draws nothing for a chat's first turn.
                ttft_plot = gr.ScatterPlot(
                    ttft_frame([]),
                    x="turn",
                    y="ttft_ms",
                    color="series",
                    title="Time to first token per turn",
                    x_title="turn in the chat",
                    y_lim=[0, None],
                    y_title="TTFT (ms)",
                    elem_id="ttft-plot",
                )
                gr.Markdown(HELP)
        history = gr.State([])
        log = gr.State({"chat": 1, "rows": []})

        chat_inputs = [message, chatbot, history, log, system_prompt, prefix_cache]
        chat_outputs = [chatbot, message, history, log, store_panel, ttft_plot]
        for trigger in (message.submit, send.click):
            trigger(respond, chat_inputs, chat_outputs, api_visibility="private", show_progress="hidden")
        new_chat_button.click(new_chat, [log], [chatbot, history, log, message], api_visibility="private")
        for control in (mode, block_size):
            control.input(configure, [mode, block_size], [store_panel], api_visibility="private")
        app.load(current_settings, None, [mode, block_size, store_panel], api_visibility="private")
        # Other tabs and API calls change the shared store too: refresh its panel now and then.
        gr.Timer(2.0).tick(
            lambda: store_markdown(engine.store_stats()),
            None,
            [store_panel],
            api_visibility="private",
            show_progress="hidden",
        )
        gr.api(generate, api_name="generate")
    return app
