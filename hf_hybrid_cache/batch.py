"""Several sequences in one generate call: a left-padded batch, repeated prompts, `num_return_sequences`
samples and beams, each row served from the store at its own depth.

Each distinct prompt runs on a batch-1 cache of its own (a row cache: the store's lookup, restore and
boundary snapshots exactly as for one request) up to its last token, and is published at once, so that a
later row hits what an earlier row of the same call computed; rows sharing a prefix save a state where
they part. The rows' caches are then laid side by side, left padded, in the request's cache, rows with the
same prompt (GRPO's repeats, samples, beams) forked from one computation, and transformers' generate runs
the whole batch from the last prompt column on. While it decodes, each row snapshots its states at its own
boundaries; at the end each row's sequence is published from its row of the batch.
"""

import torch

from .cache import HybridPrefixCache
from .integrations import auto as auto_mode
from .models import vision
from .models.keying import PromptKeying
from .models.registry import prompt_keying
from .request import GENERIC, check_input_ids, forward_to


class BatchRequest:
    """A generate call of more than one sequence (`batch > 1`, `num_return_sequences > 1` or `num_beams > 1`)
    on `model` over the batched `cache`. `auto`: a call of auto mode, which reports the prompt tokens served
    (all rows together) and runs a batch padded otherwise than on the left as unpatched generate would; an
    explicit cache refuses such a batch."""

    def __init__(
        self, model, cache: HybridPrefixCache, args: tuple, kwargs: dict, num_beams: int, num_return_sequences: int,
        auto: bool,
    ):
        self.model, self.cache, self.args, self.kwargs = model, cache, args, kwargs
        self.auto = auto
        self.num_beams = num_beams
        self.copies = num_beams if num_beams > 1 else num_return_sequences  # rows generate makes of each input row

    def run(self):
        model, cache, kwargs = self.model, self.cache, self.kwargs
        input_ids = self.args[0] if self.args else kwargs.get("input_ids", kwargs.get("inputs"))
        check_input_ids(model, input_ids)
        prompts = self._prompts(input_ids)
        if prompts is None:
            return self._run_unserved()
        rows: list[HybridPrefixCache] = []
        computed: dict[tuple, HybridPrefixCache] = {}
        try:
            cache.begin_batch()
            self._compute_prompts(prompts, computed)
            sources, offsets = [], []
            for prompt in prompts:
                source = computed[tuple(prompt.tolist())]
                for _ in range(self.copies):
                    rows.append(source.fork() if source in rows else source)
                    sources.append(source)
                    offsets.append(input_ids.shape[1] - prompt.shape[0])
            cache.stack_rows(rows, sources, offsets, track_rows=self.num_beams == 1)
            vision.forget_positions(model)  # a vision model's mRoPE offsets of its last call belong to another batch
            if self.num_beams > 1:
                for row in rows:  # beams reorder while they run: nothing of theirs is published
                    row.end_request(None)
            if self.auto:
                auto_mode.record(input_ids, cache.num_cached_tokens)
            output = type(model).generate(model, *self.args, **kwargs)
        except BaseException:
            # Interrupts included: the rows give back their pins and slots; what they published is complete.
            for row in [*computed.values(), *rows]:
                row.abort_request()
            cache.abort_request()
            raise
        sequences = output if isinstance(output, torch.Tensor) else getattr(output, "sequences", None)
        cache.end_batch(sequences, _eos_ids(model, kwargs))
        return output

    def _prompts(self, input_ids) -> list[torch.Tensor] | None:
        """Each row's prompt without its left padding; None when the rows cannot be served (images or videos,
        inputs the keys would not see, indexed attention; in auto mode, padding not on the left)."""
        model, cache, kwargs = self.model, self.cache, self.kwargs
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            return None
        keying = prompt_keying(model, input_ids, kwargs)
        if isinstance(keying, vision.MediaKeying) and not keying.items:
            keying = PromptKeying(keying.model_state)  # a vision model's text-only prompt (one row, n samples)
        if type(keying) is not PromptKeying or any(spec.extras for spec in cache.layout.attention):
            return None
        if cache.num_seen_tokens:
            raise ValueError(
                "A batched generate needs a new HybridPrefixCache (this one holds a sequence already); "
                "the store serves what earlier calls computed."
            )
        self.keying = keying
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = _mask_from_padding(model, input_ids, kwargs)
        mask = mask.bool()
        lengths = mask.sum(dim=1)
        # Left padding: each row's ones are its last `length` columns.
        columns = torch.arange(mask.shape[1], device=mask.device)
        left_padded = torch.equal(mask, columns[None] >= mask.shape[1] - lengths[:, None])
        if not left_padded or int(lengths.min()) == 0:
            if self.auto:
                return None
            raise ValueError(
                "A batch on a HybridPrefixCache must be padded on the left, with at least one token per row: "
                "set tokenizer.padding_side = 'left' (decoder-only models generate from the last column)."
            )
        return [row[mask.shape[1] - int(length) :] for row, length in zip(input_ids, lengths)]

    def _compute_prompts(self, prompts: list[torch.Tensor], computed: dict[tuple, HybridPrefixCache]) -> None:
        """Fill `computed`: prompt tokens -> a row cache holding all of that prompt but its last token, each
        distinct prompt served from the store and computed once, and published before the next is looked up."""
        distinct = {tuple(prompt.tolist()): prompt for prompt in prompts}
        shared = parting_boundaries(list(distinct), self.cache.store.block_size)
        for key, prompt in distinct.items():
            row = self.cache.new_row()
            computed[key] = row
            row.begin_request(prompt[None], None, self.keying, shared_boundaries=shared[key])
            prefill_to(self.model, row, prompt[None], end=prompt.shape[0] - 1)
            row.publish_held(prompt)

    def _run_unserved(self):
        cache = self.cache
        cache.begin_request(None, None, None)
        try:
            output = type(self.model).generate(self.model, *self.args, **self.kwargs)
        except BaseException:
            cache.abort_request()
            raise
        cache.end_request(None)
        return output


@torch.no_grad()
def prefill_to(model, cache: HybridPrefixCache, input_ids: torch.Tensor, end: int) -> None:
    """Compute `input_ids[:, cache.num_seen_tokens:end]` on `cache`, split at the boundaries the generic path
    saves (the one-pass path takes them inside one forward)."""
    if model._hf_hybrid_cache_path == GENERIC:
        for boundary in cache.prefill_boundaries():
            forward_to(model, cache, input_ids, boundary)
    if cache.num_seen_tokens < end:
        forward_to(model, cache, input_ids, end)


def parting_boundaries(prompts: list[tuple], block_size: int) -> dict[tuple, set[int]]:
    """Per prompt, the block boundaries where it parts from another prompt of the call (the last boundary of
    their common prefix, before either's final token): the state there serves the other one. A prompt given
    twice parts from itself at the last boundary before its final token."""
    shared = {prompt: set() for prompt in prompts}
    ordered = sorted(prompts)
    # In sorted order the longest common prefix of a prompt with any other is with a neighbour.
    for first, second in zip(ordered, ordered[1:]):
        common = 0
        limit = min(len(first), len(second)) - 1
        while common < limit and first[common] == second[common]:
            common += 1
        boundary = common // block_size * block_size
        if boundary:
            shared[first].add(boundary)
            shared[second].add(boundary)
    return shared


def _token_ids(model, kwargs: dict, name: str) -> set[int]:
    """The ids of generate's `pad_token_id` or `eos_token_id` setting (an int, a list or a tensor)."""
    config = kwargs.get("generation_config") or model.generation_config
    value = kwargs.get(name, getattr(config, name, None))
    if value is None:
        return set()
    values = value.tolist() if isinstance(value, torch.Tensor) else value
    return {int(token) for token in (values if isinstance(values, list) else [values])}


def _eos_ids(model, kwargs: dict) -> set[int]:
    return _token_ids(model, kwargs, "eos_token_id")


def _mask_from_padding(model, input_ids: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The attention mask generate infers when given none (transformers 5.24,
    `_prepare_attention_mask_for_generation`): the pad token's positions, if the inputs hold it and it is
    not an end-of-sequence token; otherwise every position."""
    pad = _token_ids(model, kwargs, "pad_token_id")
    if len(pad) == 1 and not pad & _eos_ids(model, kwargs):
        return input_ids.ne(pad.pop())
    return torch.ones_like(input_ids, dtype=torch.bool)
