"""How a request's prompt is keyed beyond its token ids: the one seam for model-specific keying.

A `PromptKeying` says what each block's key digests besides the tokens (the images whose placeholders fall
in it), where a hit may end (never inside an image), and what generate's inputs become once a prefix is
restored. Text prompts need none of it (`TEXT`); Qwen3.5's images and videos are `vision.MediaKeying`.
Its `model_state` is what the forward depends on beyond the parameters (peft adapters). `registry.prompt_keying`
picks one per request, or None when some input or state is invisible to the keys.
"""

from collections.abc import Container


class PromptKeying:
    """A text prompt: keys digest token ids only, a hit may end at any block boundary, inputs stay as given.

    `model_state`: what the forward depends on beyond the parameters (peft adapters' runtime state,
    `peft_state.py`), digested into the root of every key; b"": nothing.
    """

    def __init__(self, model_state: bytes = b""):
        self.model_state = model_state

    def block_extras(self, block_size: int) -> dict[int, bytes]:
        """Block index -> more content that block's key digests."""
        return {}

    def may_end_after(self, block_size: int, num_blocks: int) -> Container[int] | None:
        """The numbers of blocks a hit may span (None: any)."""
        return None

    def inputs_after_hit(self, model, kwargs: dict, num_cached_tokens: int) -> dict:
        """generate's keyword arguments once the first `num_cached_tokens` (> 0) prompt tokens are restored."""
        return kwargs


TEXT = PromptKeying()
