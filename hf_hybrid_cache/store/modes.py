"""Which block boundaries a request saves recurrent states at, per `mamba_cache_mode`.

A boundary b (a multiple of the block size) is the state after tokens 0..b-1. The rules are pure functions
of the prompt, so the one-pass path (states taken inside a forward) and the generic path (prefill split at
the boundaries) save exactly the same ones.
"""

MAMBA_CACHE_MODES = ("none", "align", "branch", "all")


def saved_boundaries(
    mode: str, block_size: int, prompt_len: int, start: int, end: int, branch_point: int = 0
) -> list[int]:
    """The boundaries b with start < b <= end at which a request with a `prompt_len`-token prompt saves states.

    - all: every boundary.
    - align: the last boundary before the final prompt token (what an exact repeat or a shared prefix
      needs), and every boundary at or past the prompt's end (what the next turn of a chat needs).
    - branch: as align, plus `branch_point`, the last boundary at or below where the prompt leaves the
      longest cached path (what the next prompt sharing that prefix needs). The cache keeps only the
      latest of the boundaries past the prompt's end (see `HybridPrefixCache`).
    - none: none.
    """
    boundaries = range((start // block_size + 1) * block_size, end + 1, block_size)
    if mode == "all":
        return list(boundaries)
    if mode in ("align", "branch"):
        last_before_final_token = (prompt_len - 1) // block_size * block_size
        wanted = {last_before_final_token, branch_point if mode == "branch" else 0}
        return [b for b in boundaries if b in wanted or b >= prompt_len]
    return []
