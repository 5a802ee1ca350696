"""Chained block keys: equal prefixes give equal keys, anything else (tokens, parent, model, namespace) differs."""

import torch

from hf_hybrid_cache.store.hashing import DIGEST_SIZE, block_keys, root_key

ROOT = root_key(b"model", None)


def test_only_complete_blocks_get_keys():
    assert len(block_keys(ROOT, torch.arange(9), block_size=4)) == 2
    assert block_keys(ROOT, torch.arange(3), block_size=4) == []


def test_keys_are_chained_over_the_whole_prefix():
    a = block_keys(ROOT, torch.tensor([1, 2, 3, 4, 5, 6]), block_size=3)
    b = block_keys(ROOT, torch.tensor([1, 2, 3, 4, 5, 6, 7]), block_size=3)
    c = block_keys(ROOT, torch.tensor([9, 2, 3, 4, 5, 6]), block_size=3)
    assert a == b[:2]
    assert all(len(key) == DIGEST_SIZE for key in a)
    # Same second block, different first block: the second key differs too.
    assert c[1] != a[1]


def test_key_depends_on_dtype_free_token_values():
    assert block_keys(ROOT, torch.tensor([1, 2], dtype=torch.int32), 2) == block_keys(ROOT, torch.tensor([1, 2]), 2)


def test_root_separates_models_and_namespaces():
    roots = {root_key(b"model", None), root_key(b"model", "tenant-a"), root_key(b"other", None), root_key(b"model", "b")}
    assert len(roots) == 4
    # Length-prefixed parts: moving a byte across the boundary changes the digest.
    assert root_key(b"ab", "c") != root_key(b"a", "bc")


def test_keys_extended_from_a_token_list_equal_the_tensor_keys():
    """Continuous batching keys a request's token list block by block: the same keys `generate()` publishes."""
    from hf_hybrid_cache.store.hashing import extend_block_keys

    root = root_key(b"model", "tenant")
    tokens = list(range(1000, 1043))
    keys = extend_block_keys([], root, tokens, 8, 2)
    assert extend_block_keys(keys, root, tokens, 8, 5) == block_keys(root, torch.tensor(tokens), 8)
    assert len(keys) == 5
