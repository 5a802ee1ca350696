"""`PrefixStore.save` / `PrefixStore.load`: round trips equal to cold (in a fresh process too), other models,
damaged, truncated, lying and foreign files, interrupted saves, smaller budgets, saving under load."""

import json
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch
from cold_oracle import assert_same_as_cold, cold_generate, generate, random_tokens
from safetensors.torch import save_file

import hf_hybrid_cache as hhc
from hf_hybrid_cache.store import persistence
from hf_hybrid_cache.tiny import tiny_qwen3_next

BLOCK_SIZE = 16


def _filled_store(model, prompts, mode="all", **kwargs) -> hhc.PrefixStore:
    store = hhc.PrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode=mode, **kwargs)
    for prompt in prompts:
        generate(model, prompt[None], hhc.HybridPrefixCache(model, store=store))
    return store


def _rewrite_index(path: Path, edit) -> None:
    """Rewrite the file's JSON index through `edit(index)`, keeping the data section as it is."""
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    index = json.loads(header["__metadata__"]["index"])
    edit(index)
    header["__metadata__"]["index"] = json.dumps(index)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data[8 + header_len :])


def _flip_byte(path: Path, tensor_name: str, row: int) -> None:
    """Flip one byte in `row` of a tensor of the file's data section."""
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    entry = json.loads(data[8 : 8 + header_len])[tensor_name]
    begin, end = entry["data_offsets"]
    row_bytes = (end - begin) // entry["shape"][0]
    data[8 + header_len + begin + row * row_bytes + row_bytes // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_round_trip_serves_hits_equal_to_cold(model, cold_model, tmp_path):
    prompt = random_tokens(100, seed=1)
    store = _filled_store(model, [prompt])
    store.save(tmp_path / "store.safetensors")
    loaded = hhc.PrefixStore.load(tmp_path / "store.safetensors")
    loaded.check_invariants()
    assert (loaded.block_size, loaded.mamba_cache_mode, loaded.eviction) == (BLOCK_SIZE, "all", store.eviction)
    assert loaded.stats()["blocks"] == store.stats()["blocks"] and loaded.bytes_used == store.bytes_used
    cache = hhc.HybridPrefixCache(model, store=loaded)
    output = generate(model, prompt[None], cache)
    assert cache.num_cached_tokens == 96
    assert_same_as_cold(output, cold_generate(cold_model, prompt[None]))


def _branch_points(store) -> dict[bytes, bool]:
    held, entries = store.hold_all()
    store.release(held)
    return {entry.key: entry.branched for entry in entries}


def test_branch_points_survive_a_reload(model, tmp_path):
    """Eviction ranks a former branch point apart from a chain (`eviction.py`): the flag is saved. Files
    written before it existed load with none."""
    shared = random_tokens(64, seed=1)
    store = _filled_store(model, [torch.cat([shared, random_tokens(40, seed=seed)]) for seed in (2, 3)])
    path = tmp_path / "store.safetensors"
    store.save(path)
    saved = _branch_points(store)
    assert sum(saved.values()) == 1  # the shared prompt's last block
    assert _branch_points(hhc.PrefixStore.load(path)) == saved
    _rewrite_index(path, lambda index: [block.pop("branched") for block in index["blocks"]])
    assert not any(_branch_points(hhc.PrefixStore.load(path)).values())


FRESH_PROCESS = """
import sys, torch
sys.path.insert(0, {tests!r})
import hf_hybrid_cache as hhc
from cold_oracle import assert_same_as_cold, cold_generate, generate, random_tokens
from hf_hybrid_cache.tiny import tiny_qwen3_next
model = hhc.patch(tiny_qwen3_next(seed=0))
store = hhc.PrefixStore.load({path!r})
prompt = torch.cat([random_tokens(100, seed=1), random_tokens(20, seed=2)])
cache = hhc.HybridPrefixCache(model, store=store)
output = generate(model, prompt[None], cache)
assert_same_as_cold(output, cold_generate(tiny_qwen3_next(seed=0), prompt[None]))
print("cached", cache.num_cached_tokens)
"""


def test_round_trip_in_a_fresh_process(model, tmp_path):
    path = tmp_path / "store.safetensors"
    _filled_store(model, [random_tokens(100, seed=1)]).save(path)
    script = FRESH_PROCESS.format(tests=str(Path(__file__).resolve().parent.parent), path=str(path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "cached 96"


def test_another_model_gets_no_hits_or_a_layout_error(model, tmp_path):
    path = tmp_path / "store.safetensors"
    store = _filled_store(model, [random_tokens(100, seed=1)])
    store.save(path)
    assert hhc.PrefixStore.load(path).model_fingerprints == store.model_fingerprints != set()
    other_weights = hhc.patch(tiny_qwen3_next(seed=1))
    cache = hhc.HybridPrefixCache(other_weights, store=hhc.PrefixStore.load(path))
    generate(other_weights, random_tokens(100, seed=1)[None], cache)
    assert cache.num_cached_tokens == 0
    other_shape = hhc.patch(tiny_qwen3_next(seed=0, hidden_size=96))
    with pytest.raises(ValueError, match="holds blocks for"):
        hhc.HybridPrefixCache(other_shape, store=hhc.PrefixStore.load(path))


def test_flipped_bytes_drop_only_the_damaged_entries(model, cold_model, tmp_path):
    path = tmp_path / "store.safetensors"
    prompt = random_tokens(100, seed=1)
    _filled_store(model, [prompt]).save(path)
    _flip_byte(path, "snapshot.0", row=0)  # blocks are saved least recently used first: the deepest block
    with pytest.warns(UserWarning, match="fail their checksum"):
        loaded = hhc.PrefixStore.load(path)
    loaded.check_invariants()
    assert loaded.stats()["snapshots"] == 5
    cache = hhc.HybridPrefixCache(model, store=loaded)
    output = generate(model, prompt[None], cache)
    assert cache.num_cached_tokens == 80
    assert_same_as_cold(output, cold_generate(cold_model, prompt[None]))


def test_a_damaged_page_drops_its_block_and_every_block_below(model, tmp_path):
    path = tmp_path / "store.safetensors"
    _filled_store(model, [random_tokens(100, seed=1)]).save(path)
    _flip_byte(path, "page.1", row=3)  # the third block of six (rows run from the deepest block up)
    with pytest.warns(UserWarning, match="fail their checksum"):
        loaded = hhc.PrefixStore.load(path)
    loaded.check_invariants()
    assert loaded.stats()["blocks"] == 2
    cache = hhc.HybridPrefixCache(model, store=loaded)
    generate(model, random_tokens(100, seed=1)[None], cache)
    assert cache.num_cached_tokens == 32


def test_truncated_and_foreign_files_are_refused_naming_the_file(model, tmp_path):
    path = tmp_path / "store.safetensors"
    _filled_store(model, [random_tokens(100, seed=1)]).save(path)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    foreign = tmp_path / "weights.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for bad in (truncated, foreign, text):
        with pytest.raises(ValueError, match=bad.name):
            hhc.PrefixStore.load(bad)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        hhc.PrefixStore.load(tmp_path / "missing.safetensors")


def _lie_parent(index):
    index["blocks"][0]["parent"] = "00" * 16


def _lie_row(index):
    index["blocks"][0]["page"] = 10_000


def _lie_shared_row(index):
    index["blocks"][1]["snapshot"] = index["blocks"][0]["snapshot"]


def _lie_layout(index):
    next(layer for layer in index["layout"]["layers"] if layer["kv"])["kv"][0][0][0] += 1


def _lie_version(index):
    index["format_version"] = 99


def _lie_key(index):
    index["blocks"][0]["key"] = "not hex"


def _lie_branched(index):
    index["blocks"][0]["branched"] = "yes"


@pytest.mark.parametrize("lie", [_lie_parent, _lie_row, _lie_shared_row, _lie_layout, _lie_version, _lie_key, _lie_branched],
                         ids=lambda lie: lie.__name__.removeprefix("_lie_"))
def test_an_index_that_lies_is_refused(model, tmp_path, lie):
    path = tmp_path / "store.safetensors"
    _filled_store(model, [random_tokens(100, seed=1)]).save(path)
    _rewrite_index(path, lie)
    with pytest.raises(ValueError, match="store.safetensors"):
        hhc.PrefixStore.load(path)


def test_an_interrupted_save_leaves_the_previous_file(model, tmp_path, monkeypatch):
    path = tmp_path / "store.safetensors"
    _filled_store(model, [random_tokens(100, seed=1)]).save(path)
    before = path.read_bytes()
    bigger = _filled_store(model, [random_tokens(100, seed=1), random_tokens(80, seed=3)])
    real_write = persistence._write_safetensors

    def crash_halfway(file, tensors, index, crc_rows):
        half = len(tensors) // 2
        real_write(file, tensors[:half], index, crc_rows[:half])
        raise KeyboardInterrupt

    monkeypatch.setattr(persistence, "_write_safetensors", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        bigger.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["store.safetensors"]
    hhc.PrefixStore.load(path).check_invariants()


def test_a_smaller_budget_keeps_the_most_recently_used(model, cold_model, tmp_path):
    path = tmp_path / "store.safetensors"
    old, recent = random_tokens(64, seed=1), random_tokens(64, seed=2)
    store = _filled_store(model, [old, recent], mode="align")
    store.save(path)
    # Room for one request's 3 pages and its snapshot at block 48.
    loaded = hhc.PrefixStore.load(path, max_bytes=3 * store.page_bytes + store.snapshot_bytes)
    loaded.check_invariants()
    served = {}
    for name, prompt in (("recent", recent), ("old", old)):  # "old" publishing first would evict "recent"
        cache = hhc.HybridPrefixCache(model, store=loaded)
        output = generate(model, prompt[None], cache)
        assert_same_as_cold(output, cold_generate(cold_model, prompt[None]))
        served[name] = cache.num_cached_tokens
    assert served == {"old": 0, "recent": 48}


def test_an_empty_store_round_trips(tmp_path):
    path = tmp_path / "empty.safetensors"
    hhc.PrefixStore(block_size=8, max_bytes=1 << 20).save(path)
    loaded = hhc.PrefixStore.load(path)
    assert (loaded.block_size, loaded.max_bytes, loaded.layout) == (8, 1 << 20, None)


def test_device_moves_every_tensor(model, tmp_path):
    path = tmp_path / "store.safetensors"
    _filled_store(model, [random_tokens(40, seed=1)]).save(path)
    loaded = hhc.PrefixStore.load(path, device="meta")
    assert {spec.device.type for spec in loaded.page_specs + loaded.snapshot_specs} == {"meta"}


def test_saving_while_other_threads_serve(model, cold_model, tmp_path):
    prompts = [random_tokens(70, seed=seed) for seed in range(4)]
    store = _filled_store(model, prompts[:1])
    errors, done = [], threading.Event()

    def serve():
        try:
            for prompt in prompts[1:] * 2:
                generate(model, prompt[None], hhc.HybridPrefixCache(model, store=store))
        except BaseException as error:  # surfaced by the assert below
            errors.append(error)
        finally:
            done.set()

    worker = threading.Thread(target=serve)
    worker.start()
    saves = 0
    while not done.is_set() or saves == 0:
        store.save(tmp_path / f"store{saves % 2}.safetensors")
        saves += 1
    worker.join()
    assert not errors
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*checksum")  # no checksum failure in any file
        for path in tmp_path.glob("*.safetensors"):
            loaded = hhc.PrefixStore.load(path)
            loaded.check_invariants()
            cache = hhc.HybridPrefixCache(model, store=loaded)
            output = generate(model, prompts[0][None], cache)
            assert cache.num_cached_tokens == 64
            assert_same_as_cold(output, cold_generate(cold_model, prompts[0][None]))
    store.check_invariants()
    assert store.stats()["pinned_blocks"] == 0
