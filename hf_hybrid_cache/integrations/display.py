"""HTML tables for notebooks: what `PrefixStore` and `HybridPrefixCache` show as their `_repr_html_`.

Plain HTML, no styles or scripts, so it renders the same in Jupyter, VS Code and GitHub's notebook viewer.
"""

from html import escape


def html_table(title: str, rows: list[tuple[str, object]]) -> str:
    """A two-column table under a bold title."""
    cells = "".join(f"<tr><td>{escape(name)}</td><td>{escape(str(value))}</td></tr>" for name, value in rows)
    return f"<div><b>{escape(title)}</b><table>{cells}</table></div>"


def mib(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:,.1f} MiB"


def store_rows(stats: dict) -> list[tuple[str, object]]:
    """The figures of `PrefixStore.stats()` worth a glance, one row each (one per tier)."""
    rows = [
        ("block size", stats["block_size"]),
        ("mode / eviction", f"{stats['mamba_cache_mode']} / {stats['eviction']}"),
        ("blocks / snapshots", f"{stats['blocks']} / {stats['snapshots']}"),
        ("hit rate", f"{stats['hit_rate']:.1%} of {stats['query_tokens']:,} prompt tokens"),
        ("evictions (blocks / snapshots)", f"{stats['evictions']} / {stats['snapshot_evictions']}"),
    ]
    for name, tier in stats["tiers"].items():
        rows.append((
            f"{name} tier",
            f"{mib(tier['bytes_used'])} of {mib(tier['max_bytes'])}, {tier['blocks']} pages, {tier['snapshots']} "
            f"snapshots, {tier['promotions']} in, {tier['demotions']} out",
        ))
    if not stats["tiers"]:
        rows.append(("memory", f"unused until a model's first cache (budget {mib(stats['max_bytes'])})"))
    return rows
