"""Turns the engine's measurements and the store's counters into what the page shows (text, plot data).

Pure functions, no Gradio: every figure they print comes from `TurnStats` or `PrefixStore.stats()`.
"""

import pandas as pd

from demo.engine import TurnStats

MIB = 1 << 20


def turn_line(stats: TurnStats) -> str:
    """One line under a reply: where its prompt tokens came from and how fast it answered."""
    rate = f"{stats.tokens_per_s:.1f} tok/s" if stats.tokens_per_s is not None else "tok/s n/a (1 token)"
    cache = f"{stats.mode}, block {stats.block_size}" if stats.prefix_cache else "off"
    ttft = f"TTFT {stats.ttft_s * 1000:.0f} ms"
    if stats.cold_ttft_s is not None:
        ttft += f", {stats.cold_ttft_s / stats.ttft_s:.1f}x faster than cold ({stats.cold_ttft_s * 1000:.0f} ms)"
    return (
        f"[prompt {stats.prompt_tokens} · cached {stats.cached_tokens} · computed {stats.computed_tokens}"
        f" · {ttft} · {rate} · cache {cache}]"
    )


def store_markdown(stats: dict) -> str:
    """The process-wide store as a table: size against budget, contents, hit rate, evictions."""
    queried, hit = stats["query_tokens"], stats["hit_tokens"]
    hit_rate = f"{hit / queried:.0%} ({hit} of {queried} prompt tokens)" if queried else "no queries yet"
    rows = [
        ("mode / block size", f"{stats['mamba_cache_mode']} / {stats['block_size']} tokens"),
        ("bytes used / budget", f"{stats['bytes_used'] / MIB:.2f} MiB / {stats['max_bytes'] / MIB:.0f} MiB"),
        ("blocks (K/V pages)", str(stats["blocks"])),
        ("snapshots (GDN states)", str(stats["snapshots"])),
        ("hit rate", hit_rate),
        ("queries", str(stats["queries"])),
        ("evictions", str(stats["evictions"])),
        ("saved to", f"`{stats['saved_to']}` (after each reply, and on exit)" if stats.get("saved_to") else "memory only (`--store PATH` keeps it)"),
    ]
    lines = ["| store (shared by all tabs) | now |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]
    return "\n".join(lines)


def ttft_frame(rows: list[dict]) -> pd.DataFrame:
    """Plot data: one row per turn with `turn` (as text: a category axis keeps end points inside the
    plot), `ttft_ms` and `series` ("chat 2 · cache on")."""
    frame = pd.DataFrame(rows, columns=["turn", "ttft_ms", "series"])
    return frame.astype({"turn": str})


def turn_order(rows: list[dict]) -> list[str]:
    """The turn labels in numeric order ("2" before "10"), for the plot's category axis."""
    return [str(turn) for turn in range(1, max((row["turn"] for row in rows), default=0) + 1)]
