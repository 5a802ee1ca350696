"""One generate request on a `HybridPrefixCache`, from its first step to its last: check the inputs, key the
prompt (`models/registry.prompt_keying`), look up and restore the longest cached prefix (the cache and its
store), adjust generate's inputs to the restored prefix, prefill to the boundaries the generic path saves,
run transformers' generate, then publish the request's blocks, or give everything back if it failed.

`patching.py` decides which calls become a request (and on which cache); everything after that is here, for
one sequence (several: `batch.py`, which shares `forward_to` and the input checks).
"""

import inspect

import torch

from .cache import HybridPrefixCache
from .integrations import auto as auto_mode
from .models.registry import prompt_keying

# The three paths `patch` picks per model (see patching.py).
ONE_PASS = "one-pass"
GENERIC = "generic"
ATTENTION_ONLY = "attention-only"


class PrefixRequest:
    """A `generate(*args, **kwargs)` call on `model` over `cache`. `record_hit`: report the prompt tokens
    served from the store per input tensor (auto mode, for `cached_tokens`)."""

    def __init__(self, model, cache: HybridPrefixCache, args: tuple, kwargs: dict, record_hit: bool = False):
        self.model, self.cache, self.args, self.kwargs = model, cache, args, kwargs
        self.record_hit = record_hit

    def run(self):
        """Generate, served from and published to the store; returns what generate returns."""
        model, cache, kwargs = self.model, self.cache, self.kwargs
        input_ids = self.args[0] if self.args else kwargs.get("input_ids", kwargs.get("inputs"))
        check_input_ids(model, input_ids)
        # None: nothing is looked up or published, the keys would not see all the inputs.
        keying = prompt_keying(model, input_ids, kwargs)
        try:
            cache.begin_request(input_ids, kwargs.get("attention_mask"), keying)
            if self.record_hit:
                # Before generating: a streaming caller reports usage as soon as generate's streamer ends.
                auto_mode.record(input_ids, cache.num_cached_tokens)
            if cache.num_cached_tokens:
                kwargs = keying.inputs_after_hit(model, kwargs, cache.num_cached_tokens)
            if model._hf_hybrid_cache_path == GENERIC:
                _prefill_to_boundaries(model, cache, input_ids)
            output = type(model).generate(model, *self.args, **kwargs)
        except BaseException:
            # Interrupts included: nothing of a half-run request reaches the store.
            cache.abort_request()
            raise
        sequences = output if isinstance(output, torch.Tensor) else getattr(output, "sequences", None)
        cache.end_request(sequences)
        return output


def _prefill_to_boundaries(model, cache: HybridPrefixCache, input_ids: torch.Tensor) -> None:
    """Run the prompt up to each boundary the mode saves, one forward per stretch: the step hook then
    snapshots the states there. Generate computes the rest of the prompt from the cache."""
    for boundary in cache.prefill_boundaries():
        forward_to(model, cache, input_ids, boundary)


@torch.no_grad()
def forward_to(model, cache: HybridPrefixCache, input_ids: torch.Tensor, end: int) -> None:
    """One forward of `input_ids[:, cache.num_seen_tokens:end]` on `cache` (batch 1), keeping the logits of
    one token only."""
    start = cache.num_seen_tokens
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    # Positions passed explicitly, as generate does: some families (Bamba) restart them at 0 otherwise.
    positions = torch.arange(start, end, device=input_ids.device)[None]
    model(input_ids=input_ids[:, start:end], position_ids=positions, cache=cache, use_cache=True, **extra)


def refuse_multi_token_prediction(model, kwargs: dict) -> None:
    """MTP drafting (`use_mtp`, transformers 5.25) is not served on a HybridPrefixCache: its drafting layers keep
    a cache of their own, filled from the main model's hidden states over the whole prompt in the first forward,
    which a prefix hit does not run. (In 5.25 no hybrid family we patch drafts with MTP at all: the one-pass
    families load no MTP layers and `bailing_hybrid` registers no MTP weight pattern.)"""
    if auto_mode.generation_setting(model, kwargs, "use_mtp"):
        raise ValueError(
            "use_mtp (multi-token-prediction drafts) is not served on a HybridPrefixCache: the MTP layers need the "
            "main model's hidden states over the whole prompt, which a prefix hit skips. Run it without a "
            "HybridPrefixCache, or draft with prompt_lookup_num_tokens= or assistant_model=."
        )


def sequences_per_prompt(model, kwargs: dict) -> tuple[int, int]:
    """(num_beams, num_return_sequences) of a generate call."""
    config = kwargs.get("generation_config") or model.generation_config
    num_beams = kwargs.get("num_beams", config.num_beams) or 1
    num_return_sequences = kwargs.get("num_return_sequences", config.num_return_sequences) or 1
    return num_beams, num_return_sequences


def check_input_ids(model, input_ids) -> None:
    if not isinstance(input_ids, torch.Tensor):
        return  # inputs_embeds: nothing to look up, generate validates the rest
    if input_ids.ndim != 2 or input_ids.numel() == 0:
        raise ValueError(
            f"input_ids must be a non-empty [batch, seq_len] tensor, got shape {tuple(input_ids.shape)}: "
            "tokenize a non-empty prompt, e.g. tokenizer(text, return_tensors='pt').input_ids."
        )
    vocab_size = model.get_input_embeddings().num_embeddings
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"input_ids hold token ids in [{low}, {high}] but the model's vocabulary is [0, {vocab_size - 1}]: "
            "use the tokenizer that belongs to this model."
        )
