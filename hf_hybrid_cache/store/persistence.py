"""Saving a `PrefixStore` to one safetensors file and loading it back (`PrefixStore.save` / `PrefixStore.load`).

The file is plain safetensors, written slot by slot (no copy of the whole store in memory): per page tensor
`page.{j}` `[num_pages, *page_shape]`, per snapshot tensor `snapshot.{j}` `[num_snapshots, *state_shape]`,
and in the header's metadata a JSON index (format version, block size, mode, layout, model fingerprints, and
per block its key, parent, rows, CRC32 per saved slot, recency and whether it was a branch point). Never
pickle. Writes go to a temporary file renamed over the target, so a crash leaves the previous file or none.
Loading fills a new store through its parts (block index, tier stack) before anyone else holds it.
"""

import json
import os
import uuid
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..layout import ModelLayout
from .eviction import EVICTION_POLICIES, Victim
from .modes import MAMBA_CACHE_MODES
from .tiers import DEVICE

FORMAT = "hf_hybrid_cache.prefix_store"
FORMAT_VERSION = 1
KEY_HEX_LEN = 32  # 128-bit block keys (`hashing.DIGEST_SIZE`)
SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


@dataclass(frozen=True)
class SavedBlock:
    """One block as the index records it: `page` / `snapshot` are rows of the page / snapshot tensors."""

    key: bytes
    parent: bytes | None
    page: int
    page_crc: int
    snapshot: int | None
    snapshot_crc: int | None
    page_used: int
    snapshot_used: int
    branched: bool


# -- saving --------------------------------------------------------------------------------------------------


def save_store(store, path) -> None:
    """Write `store` to `path` atomically; other threads keep serving meanwhile (every block is pinned while
    its slots are read, so nothing saved is evicted or rewritten underneath)."""
    path = Path(path)
    held, entries = store.hold_all()
    try:
        index, tensors, crc_rows = _describe(store, entries)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as file:
                _write_safetensors(file, tensors, index, crc_rows)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    finally:
        store.release(held)


def _describe(store, entries):
    """The JSON index (checksums still to fill in); per safetensors tensor its name, dtype, shape and rows (slot
    views); and per tensor, for each row, the index record and field ("page_crc" or "snapshot_crc") whose
    checksum the row's bytes go into."""
    pages = [store.page_views(entry.page_id, entry.page_tier) for entry in entries]
    snapshots = [
        store.snapshot_views(entry.snapshot_id, entry.snapshot_tier) for entry in entries if entry.snapshot_id is not None
    ]
    blocks, snapshot_records = [], []
    for entry in entries:
        record = dict(
            key=entry.key.hex(),
            parent=entry.parent_key.hex() if entry.parent_key else None,
            page=len(blocks),
            page_crc=0,
            snapshot=None,
            snapshot_crc=None,
            page_used=entry.page_used,
            snapshot_used=entry.snapshot_used,
            branched=entry.branched,
        )
        if entry.snapshot_id is not None:
            record.update(snapshot=len(snapshot_records), snapshot_crc=0)
            snapshot_records.append(record)
        blocks.append(record)
    index = dict(
        format_version=FORMAT_VERSION,
        block_size=store.block_size,
        mamba_cache_mode=store.mamba_cache_mode,
        eviction=store.eviction,
        max_bytes=store.max_bytes,
        host_bytes=store.host_bytes,
        model_fingerprints=sorted(store.model_fingerprints),
        layout=store.layout.to_dict() if store.layout else None,
        blocks=blocks,
    )
    tensors, crc_rows = [], []
    for kind, rows, records, specs in (
        ("page", pages, blocks, store.page_specs), ("snapshot", snapshots, snapshot_records, store.snapshot_specs)
    ):
        for j, spec in enumerate(specs):
            tensors.append((f"{kind}.{j}", spec.dtype, (len(rows), *spec.shape), [row[j] for row in rows]))
            crc_rows.append([(record, f"{kind}_crc") for record in records])
    return index, tensors, crc_rows


def _write_safetensors(file, tensors, index: dict, crc_rows) -> None:
    """The safetensors layout: 8-byte little-endian header length, JSON header (padded to 8), raw data.

    Each slot is read once: its bytes are written and added to its block's CRC32 (tensor by tensor, as `load`
    checks them), and the header, written first with the widest CRC in every place, is rewritten over
    itself at the end, padded with spaces to the same length.
    """
    header, offset = {}, 0
    for name, dtype, shape, rows in tensors:
        num_bytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = dict(dtype=SAFETENSORS_DTYPES[dtype], shape=list(shape), data_offsets=[offset, offset + num_bytes])
        offset += num_bytes

    def encode() -> bytes:
        header["__metadata__"] = {"format": FORMAT, "index": json.dumps(index)}
        return json.dumps(header, separators=(",", ":")).encode()

    checksums = [(record, field) for records in crc_rows for record, field in records]
    for record, field in checksums:
        record[field] = 0xFFFFFFFF  # the widest a CRC32 prints: the final header can only be shorter
    reserved = encode()
    reserved += b" " * (-len(reserved) % 8)
    file.write(len(reserved).to_bytes(8, "little"))
    file.write(reserved)
    for record, field in checksums:
        record[field] = 0
    for (_, _, _, rows), records in zip(tensors, crc_rows):
        for row, (record, field) in zip(rows, records):
            data = _as_bytes(row)
            record[field] = zlib.crc32(data, record[field])
            file.write(data)
    file.seek(8)
    file.write(encode().ljust(len(reserved)))


def _as_bytes(tensor: torch.Tensor):
    """The tensor's bytes as a host buffer (any dtype, bf16 included)."""
    return tensor.detach().contiguous().cpu().view(torch.uint8).numpy()


# -- loading -------------------------------------------------------------------------------------------------


def load_store(store_class, path, max_bytes: int | None, host_bytes: int | None, device, remote=None):
    """Build a store from the file at `path` (see `PrefixStore.load`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No prefix store file at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError(f"{path} is a safetensors file but not a prefix store saved by PrefixStore.save")
            try:
                config, layout, blocks = _read_index(json.loads(metadata["index"]), device)
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                raise ValueError(f"{path} has a damaged or inconsistent index, refused: {error!r}") from None
            store = store_class(
                block_size=config["block_size"],
                mamba_cache_mode=config["mamba_cache_mode"],
                max_bytes=config["max_bytes"] if max_bytes is None else max_bytes,
                eviction=config["eviction"],
                host_bytes=config["host_bytes"] if host_bytes is None else host_bytes,
                remote=remote,
            )
            if layout is not None:
                store.bind(layout)
            try:
                _check_tensors(file, store, blocks)
            except ValueError as error:
                raise ValueError(f"{path} does not match its own index, refused: {error}") from None
            store.model_fingerprints.update(config["model_fingerprints"])
            if layout is not None:
                _load_blocks(file, store, blocks, path)
    except SafetensorError as error:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or not one): {error}") from None
    return store


def _read_index(index: dict, device) -> tuple[dict, ModelLayout | None, list[SavedBlock]]:
    """Validate the index; raise ValueError (or KeyError / TypeError) at the first thing that does not hold."""
    if index.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"format_version {index.get('format_version')!r}, this version reads {FORMAT_VERSION}")
    config = {
        name: index[name]
        for name in ("block_size", "mamba_cache_mode", "eviction", "max_bytes", "host_bytes", "model_fingerprints")
    }
    if config["mamba_cache_mode"] not in MAMBA_CACHE_MODES or config["eviction"] not in EVICTION_POLICIES:
        raise ValueError(f"unknown mode or eviction policy: {config['mamba_cache_mode']!r}, {config['eviction']!r}")
    for name in ("block_size", "max_bytes"):
        if _row(config[name]) == 0:
            raise ValueError(f"{name} is 0")
    _row(config["host_bytes"])
    if not all(isinstance(fingerprint, str) for fingerprint in config["model_fingerprints"]):
        raise TypeError("model_fingerprints must be strings")
    layout = ModelLayout.from_dict(index["layout"], device) if index["layout"] is not None else None
    blocks = [
        SavedBlock(
            key=_key(record["key"]),
            parent=_key(record["parent"]) if record["parent"] is not None else None,
            page=_row(record["page"]),
            page_crc=_row(record["page_crc"]),
            snapshot=_row(record["snapshot"]) if record["snapshot"] is not None else None,
            snapshot_crc=_row(record["snapshot_crc"]) if record["snapshot"] is not None else None,
            page_used=_row(record["page_used"]),
            snapshot_used=_row(record["snapshot_used"]),
            # Absent from files written before eviction remembered branch points: none then.
            branched=_flag(record.get("branched", False)),
        )
        for record in index["blocks"]
    ]
    if blocks and layout is None:
        raise ValueError("blocks without a layout")
    # Blocks are listed least recently used first and a parent is always more recent than its children:
    # checking that each parent comes later rules out cycles and dangling parents at once.
    position = {block.key: i for i, block in enumerate(blocks)}
    if len(position) != len(blocks):
        raise ValueError("a block key is listed twice")
    for i, block in enumerate(blocks):
        if block.parent is not None and position.get(block.parent, -1) <= i:
            raise ValueError(f"block {block.key.hex()[:8]} has a parent that is missing or listed before it")
    for field in ("page", "snapshot"):
        rows = [getattr(block, field) for block in blocks if getattr(block, field) is not None]
        if len(set(rows)) != len(rows):
            raise ValueError(f"two blocks share a {field} row")
    return config, layout, blocks


def _key(text) -> bytes:
    if not isinstance(text, str) or len(text) != KEY_HEX_LEN:
        raise ValueError(f"{text!r} is not a block key")
    return bytes.fromhex(text)


def _flag(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not a flag")
    return value


def _row(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a row, checksum or clock")
    return value


def _check_tensors(file, store, blocks: list[SavedBlock]) -> None:
    """Every tensor the layout needs is in the file with its shape and dtype, and every row the index names."""
    names = set(file.keys())
    for kind, specs in (("page", store.page_specs), ("snapshot", store.snapshot_specs)):
        num_rows = 1 + max((getattr(block, kind) for block in blocks if getattr(block, kind) is not None), default=-1)
        for j, spec in enumerate(specs):
            name = f"{kind}.{j}"
            if name not in names:
                raise ValueError(f"tensor {name} is missing")
            tensor = file.get_slice(name)
            shape, dtype = tuple(tensor.get_shape()), tensor.get_dtype()
            if shape[1:] != spec.shape or dtype != SAFETENSORS_DTYPES[spec.dtype] or shape[0] < num_rows:
                raise ValueError(
                    f"tensor {name} is {dtype}{list(shape)}, the layout needs {num_rows} rows of {spec.dtype}{list(spec.shape)}"
                )


def _load_blocks(file, store, blocks: list[SavedBlock], path: Path) -> None:
    """Adopt the most recently used blocks that fit the budgets, copy their slots tensor by tensor, and drop
    (with a warning) every entry whose checksum does not match, with the blocks below a dropped page."""
    placed = _select(store, blocks)
    views = _adopt_blocks(store, placed)
    kept = [block for block, _, _ in placed]
    crcs = {block.key: [0, 0] for block in kept}
    for kind, position in (("page", 0), ("snapshot", 1)):
        for j in range(len(store.page_specs if kind == "page" else store.snapshot_specs)):
            # One tensor at a time: a tenth of the file in memory at most for a model of ten layers.
            tensor = file.get_tensor(f"{kind}.{j}")
            for block in kept:
                row = getattr(block, kind)
                if row is None:
                    continue
                source = tensor[row]
                crcs[block.key][position] = zlib.crc32(_as_bytes(source), crcs[block.key][position])
                views[block.key][position][j].copy_(source)
            del tensor
    bad_pages = {block.key for block in kept if crcs[block.key][0] != block.page_crc}
    bad_snapshots = {block.key for block in kept if block.snapshot is not None and crcs[block.key][1] != block.snapshot_crc}
    if bad_pages or bad_snapshots:
        dropped = _drop_damaged(store, bad_pages, bad_snapshots)
        warnings.warn(
            f"{path}: {len(bad_pages)} pages and {len(bad_snapshots)} snapshots fail their checksum (the file is "
            f"damaged); dropped them and the {dropped - len(bad_pages)} blocks below those pages. Nothing damaged is served.",
            stacklevel=4,
        )


def _adopt_blocks(store, placed) -> dict[bytes, tuple[list[torch.Tensor], list[torch.Tensor] | None]]:
    """Add the `placed` blocks (`_select`'s answer) to the new, empty store through its parts (no one else
    holds it yet), without evicting; returns per key the page and snapshot slot views to fill."""
    with store._lock:
        index, tiers = store._index, store._tiers
        views, adopted = {}, []
        for saved, page_tier, snapshot_tier in reversed(placed):  # most recent first: parents before children
            parent = index.get(saved.parent) if saved.parent is not None else None
            page_id = tiers.tiers[page_tier].pages.allocate()
            block = index.add(saved.key, parent, page_id, page_tier)
            block.page_used, block.snapshot_used = saved.page_used, saved.snapshot_used
            snapshot = None
            if snapshot_tier is not None:
                block.snapshot_id, block.snapshot_tier = tiers.tiers[snapshot_tier].snapshots.allocate(), snapshot_tier
                snapshot = tiers.views("snapshot", block.snapshot_id, snapshot_tier)
            adopted.append(block)
            views[saved.key] = (tiers.views("page", page_id, page_tier), snapshot)
        for block, (saved, _, _) in zip(adopted, reversed(placed)):
            block.branched = saved.branched  # as saved, not as the loaded children say (see `_read_index`)
        index.reorder(adopted[::-1])
        return views


def _drop_damaged(store, page_keys: set[bytes], snapshot_keys: set[bytes]) -> int:
    """Drop the blocks of `page_keys` with every block below them, and the snapshots of `snapshot_keys`
    (their pages stay). Returns the number of blocks dropped."""
    with store._lock:
        index, tiers = store._index, store._tiers
        dropped = set()
        for block in reversed(list(index)):  # most recent first: parents before their children
            if block.key in page_keys or (block.parent is not None and block.parent.key in dropped):
                dropped.add(block.key)
        for key in snapshot_keys - dropped:
            tiers.drop(Victim(index.get(key), snapshot_only=True))
        for block in list(index):  # least recent first: children before their parents
            if block.key in dropped:
                tiers.drop(Victim(block))
        return len(dropped)


def _select(store, blocks: list[SavedBlock]) -> list[tuple[SavedBlock, int, int | None]]:
    """The most recently used blocks (and snapshots) that fit the store, in the device tier first and then
    the host tier, parents always kept with their children. Returns (block, page tier, snapshot tier or None
    for none), least recently used first, as saved."""
    budgets = [store.max_bytes] + ([store.host_bytes] if store.host_bytes else [])
    used = [0] * len(budgets)

    def place(num_bytes: int, first_tier: int) -> int | None:
        for tier in range(first_tier, len(budgets)):
            if used[tier] + num_bytes <= budgets[tier]:
                used[tier] += num_bytes
                return tier
        return None

    kept, page_tiers = [], {}
    for block in reversed(blocks):  # most recent first: parents come before their children
        if block.parent is not None and block.parent not in page_tiers:
            continue
        # No page above its parent's tier: chains leave the device from their tail, as eviction moves them.
        page_tier = place(store.page_bytes, page_tiers.get(block.parent, DEVICE))
        if page_tier is None:
            continue
        snapshot_tier = place(store.snapshot_bytes, page_tier) if block.snapshot is not None else None
        if snapshot_tier is None:
            block = replace(block, snapshot=None, snapshot_crc=None)
        page_tiers[block.key] = page_tier
        kept.append((block, page_tier, snapshot_tier))
    return kept[::-1]
