"""`score`: logits of sequences from a given position on, their prefixes served from the store: what
likelihood evaluation (lm-eval's loglikelihood, reward and perplexity scripts) needs, without `generate`.

Each sequence is looked up on a batch-1 row cache of its own; where sequences of the call share a prefix
longer than what the store served, the first of them computes it and publishes it (with the state where
they part), so the others are served it. Then the rows are stacked (`batch.py`) and one forward computes
everything left of every sequence, right-padded, keeping the logits from each one's first scored position.
"""

import torch

from .batch import parting_boundaries, prefill_to
from .cache import HybridPrefixCache
from .models.registry import prompt_keying
from .models.wrappers import unwrap
from .rows import bind_row
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
    if not sequences:
        return []
    served = unwrap(model)
    batch = HybridPrefixCache(served, store=store, namespace=namespace)
    prefixes = [tuple(tokens[: first + 1].tolist()) for tokens, first in zip(sequences, logits_from)]
    shared = parting_boundaries(prefixes, batch.store.block_size)  # repeats too: choices of one context
    rows = []
    try:
        batch.begin_batch()
        for tokens, first, prefix in zip(sequences, logits_from, prefixes):
            rows.append(_served_row(served, batch.new_row(), tokens[: first + 1], shared[prefix]))
        held = [row.num_seen_tokens for row in rows]
        offsets = [max(held) - num_held for num_held in held]
        batch.stack_rows(rows, rows, offsets, track_rows=False)
        logits = _forward_rest(served, batch, sequences, held)
        for row_idx, (row, tokens, first) in enumerate(zip(rows, sequences, logits_from)):
            # Pages only: a state inside the batched step is not kept. A later sequence that matches them
            # saves one where it leaves them (branch mode's branch point), and the next is served from there.
            bind_row(batch, row, row_idx, offsets[row_idx])
            row.publish_held(tokens[:first])
            row.end_request(None)
    except BaseException:
        for row in rows:
            row.abort_request()
        batch.abort_request()
        raise
    batch.end_batch(None, set())
    return [row_logits[first - num_held :] for row_logits, first, num_held in zip(logits, logits_from, held)]


def _served_row(model, row: HybridPrefixCache, prompt: torch.Tensor, shared_boundaries: set[int]) -> HybridPrefixCache:
    """`row` holding the cached prefix of `prompt` `[prompt_len]` (keyed as a prompt ending at the first scored
    token, so a hit leaves that token to compute), then computed on its own up to the last boundary
    `_computed_alone` names, if the store did not have it, and published."""
    row.begin_request(prompt[None], None, prompt_keying(model, prompt[None], {}), shared_boundaries=shared_boundaries)
    end = max(_computed_alone(row, shared_boundaries, prompt.shape[0]), default=0)
    if end > row.num_seen_tokens:
        prefill_to(model, row, prompt[None], end=end)
        row.publish_held(prompt)
    return row


def _computed_alone(row: HybridPrefixCache, shared_boundaries: set[int], prompt_len: int) -> set[int]:
    """The boundaries a sequence's row computes to on its own, saving states there (the rest runs in the
    batched forward, which keeps none): where it parts from another sequence of the call, where it leaves
    the store's longest cached path (branch mode), every boundary before its first scored token (mode all).
    The last boundary of each sequence's own context (align's) is not: a sequence is scored once."""
    if not row._recording:
        return set()
    mode, block_size = row.store.mamba_cache_mode, row.store.block_size
    boundaries = set(shared_boundaries)
    if mode == "branch":
        boundaries.add(row._branch_point)
    if mode == "all" and row.store.needs_snapshots:
        boundaries.add((prompt_len - 1) // block_size * block_size)
    return boundaries


@torch.no_grad()
def _forward_rest(model, batch: HybridPrefixCache, sequences: list[torch.Tensor], held: list[int]) -> list[torch.Tensor]:
    """One forward of every sequence's tokens after the `held[i]` the stacked `batch` holds for it, right-padded
    (pads after a sequence's last token change none of its logits). Returns per sequence `[len_i - held_i, vocab]`."""
    rests = [tokens[num_held:] for tokens, num_held in zip(sequences, held)]
    width = max(len(rest) for rest in rests)
    device = sequences[0].device
    input_ids = torch.zeros(len(rests), width, dtype=sequences[0].dtype, device=device)
    mask = torch.zeros(len(rests), batch.num_seen_tokens + width, dtype=torch.long, device=device)
    for i, (rest, num_held) in enumerate(zip(rests, held)):
        input_ids[i, : len(rest)] = rest
        mask[i, batch.num_seen_tokens - num_held : batch.num_seen_tokens + len(rest)] = 1
    positions = torch.tensor(held, device=device)[:, None] + torch.arange(width, device=device)[None]
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=batch, use_cache=True).logits
    return [logits[i, : len(rest)] for i, rest in enumerate(rests)]
