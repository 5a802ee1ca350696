"""`score`: logits of sequences from a given position on, their prefixes served from the store: what
likelihood evaluation (lm-eval's loglikelihood, reward and perplexity scripts) needs, without `generate`.

Each sequence runs as a batch-1 request of its own: the longest cached prefix before its first scored
position is restored, the rest of that prefix is computed and published (with states where other sequences
of the call part from it), then one forward computes the scored positions' logits.
"""

import torch

from .batch import _prefill, _shared_boundaries
from .cache import HybridPrefixCache
from .models.registry import prompt_keying
from .models.wrappers import unwrap
from .store.prefix_store import PrefixStore


@torch.no_grad()
def score(
    model: torch.nn.Module,
    sequences: list[torch.Tensor],
    logits_from: list[int],
    store: PrefixStore | None = None,
    namespace: str | None = None,
) -> list[torch.Tensor]:
    """The logits of each sequence at positions `logits_from[i]` to its end.

    Args:
        model: a patched causal LM (or a peft or `torch.compile` wrapper of one).
        sequences: token ids, each `[seq_len_i]`.
        logits_from: per sequence, the first position whose logits are wanted (`0 <= logits_from[i] < seq_len_i`):
            the tokens before it are served from the store where it can, computed and published otherwise.
        store, namespace: as for `HybridPrefixCache`.

    Returns:
        per sequence, `[seq_len_i - logits_from[i], vocab_size]`: row j holds the logits after token
        `logits_from[i] + j` (the prediction of the token after it), equal to a cold forward's.
    """
    if len(sequences) != len(logits_from):
        raise ValueError(f"score() got {len(sequences)} sequences but {len(logits_from)} logits_from positions: give one each.")
    for tokens, first in zip(sequences, logits_from):
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 1 or tokens.dtype not in (torch.int32, torch.int64):
            raise TypeError("score() takes each sequence as a 1-D tensor of token ids, e.g. tokenizer(text, return_tensors='pt').input_ids[0]")
        if isinstance(first, bool) or not isinstance(first, int) or not 0 <= first < tokens.shape[0]:
            raise ValueError(f"logits_from must be an int in [0, {tokens.shape[0] - 1}] for a {tokens.shape[0]}-token sequence, got {first!r}")
    served = unwrap(model)
    parent = HybridPrefixCache(served, store=store, namespace=namespace)
    prefixes = [tuple(tokens[: first + 1].tolist()) for tokens, first in zip(sequences, logits_from)]
    shared = _shared_boundaries(list(dict.fromkeys(prefixes)), parent.store.block_size)
    return [_score_one(served, parent.new_row(), tokens, first, shared[prefix]) for tokens, first, prefix in zip(sequences, logits_from, prefixes)]


def _score_one(model, row: HybridPrefixCache, tokens: torch.Tensor, first: int, shared_boundaries: set[int]) -> torch.Tensor:
    # The prefix is keyed as a prompt ending at the first scored token: a hit leaves that token to compute.
    prompt = tokens[: first + 1][None]
    try:
        row.begin_request(prompt, None, prompt_keying(model, prompt, {}), shared_boundaries=shared_boundaries)
        _prefill(model, row, prompt, end=first)
        row.publish_held(prompt[0], record_more=False)
        positions = torch.arange(first, tokens.shape[0], device=tokens.device)[None]
        logits = model(input_ids=tokens[None, first:], position_ids=positions, cache=row, use_cache=True).logits[0]
    except BaseException:
        row.abort_request()
        raise
    row.end_request(None)
    return logits
