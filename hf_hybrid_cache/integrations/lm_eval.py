"""`HybridHFLM`: lm-eval's `HFLM` whose loglikelihood and generate_until reuse cached prefixes (the few-shot
block, a shared context, the choices of one question) at any batch size. Registered as the lm-eval model
`hf-hybrid-cache` on import (`hf_hybrid_cache.lm_eval`).

Two seams of lm-eval 0.4.13's `HFLM` (checked with that version): `_model_call`, whose logits come from
`scoring.score` (each row's prefix served from the store, the continuation computed), and the model's
`generate`, patched in auto mode (batches served row by row, `batch.py`).
"""

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from ..patching import patch
from ..scoring import score
from ..store.prefix_store import PrefixStore


@register_model("hf-hybrid-cache")
class HybridHFLM(HFLM):
    """`HFLM` with prefix caching; takes HFLM's arguments, and:

    Args:
        prefix_store: the `PrefixStore` to share (None: a new one with `block_size` and `mamba_cache_mode`).
        block_size, mamba_cache_mode: of the new store (`PrefixStore`'s defaults when None). A hit ends on a
            block boundary: smaller blocks serve more of the shared few-shot prefix, in more entries.
    """

    def __init__(
        self,
        *args,
        prefix_store: PrefixStore | None = None,
        block_size: int | None = None,
        mamba_cache_mode: str | None = None,
        **kwargs,
    ):
        if prefix_store is not None and (block_size is not None or mamba_cache_mode is not None):
            raise ValueError("Pass either prefix_store or the settings of a new one (block_size, mamba_cache_mode), not both.")
        super().__init__(*args, **kwargs)
        if prefix_store is None:
            settings = dict(block_size=block_size, mamba_cache_mode=mamba_cache_mode)
            prefix_store = PrefixStore(**{name: value for name, value in settings.items() if value is not None})
        self.prefix_store = prefix_store
        patch(self.model, auto=True, store=prefix_store)
        # While `_loglikelihood_tokens` runs: each model input (tuple of token ids) -> how many of its last
        # positions are scored (the continuation's length).
        self._scored_lengths: dict[tuple, int] | None = None

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        scored = {}
        for _, context, continuation in requests:
            # The model input HFLM builds: context and continuation, left-truncated, without the last token.
            model_input = tuple((context + continuation)[-(self.max_length + 1) :][:-1])
            scored[model_input] = max(scored.get(model_input, 0), len(continuation))
        self._scored_lengths = scored
        try:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            self._scored_lengths = None

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        """inps `[batch, padded_len]` (right-padded with 0) -> logits `[batch, padded_len, vocab_size]`, computed
        at each row's scored positions (its continuation) and zero elsewhere, which HFLM never reads."""
        rows = [self._scored_row(row) for row in inps] if self._scored_lengths is not None and attn_mask is None else None
        if rows is None or None in rows:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        sequences = [inps[i, :length] for i, (length, _) in enumerate(rows)]
        firsts = [length - num_scored for length, num_scored in rows]
        with torch.autocast(
            device_type=self.device.type, dtype=self.mixed_precision_dtype, enabled=self.mixed_precision_dtype is not None
        ):
            logits = score(self.model, sequences, firsts, store=self.prefix_store)
        out = logits[0].new_zeros((inps.shape[0], inps.shape[1], logits[0].shape[-1]))
        for i, (row_logits, first) in enumerate(zip(logits, firsts)):
            out[i, first : first + row_logits.shape[0]] = row_logits
        return out

    def _scored_row(self, row: torch.Tensor) -> tuple[int, int] | None:
        """(length without the right padding, number of scored positions) of one row of `_model_call`'s input;
        None if it is no input of the requests being scored."""
        tokens = row.tolist()
        nonzero = [i for i, token in enumerate(tokens) if token != 0]
        # The padding is zeros, which a real input may also end with: try each length the zeros allow.
        for length in range((nonzero[-1] + 1) if nonzero else 1, len(tokens) + 1):
            num_scored = self._scored_lengths.get(tuple(tokens[:length]))
            if num_scored is not None:
                return length, min(num_scored, length)
        return None
