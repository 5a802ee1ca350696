"""Paged K/V write and gather kernels (interpreted) against the references."""

import pytest
import torch

from hf_hybrid_cache.kernels.paged_triton import paged_kv_gather_triton, paged_kv_write_triton
from hf_hybrid_cache.kernels.reference import paged_kv_gather_ref, paged_kv_write_ref

NUM_PAGES, NUM_HEADS, HEAD_DIM = 7, 3, 24


# block_size 40 spans two 32-row tiles, the second masked; HEAD_DIM = 24 masks a 32-wide tile.
@pytest.mark.parametrize("block_size", [16, 40], ids=["bs16", "bs40"])
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous-kv", "strided-kv"])
def test_write_fills_exactly_the_given_pages(block_size, strided):
    page_ids = torch.tensor([5, 0, 3])
    shape = (NUM_HEADS, len(page_ids) * block_size, HEAD_DIM)
    if strided:  # [T, H, D] storage seen as [H, T, D], as a transposed model output would be
        keys, values = (torch.randn(shape[1], shape[0], shape[2]).transpose(0, 1) for _ in range(2))
    else:
        keys, values = torch.randn(shape), torch.randn(shape)
    pages = torch.full((NUM_PAGES, 2, NUM_HEADS, block_size, HEAD_DIM), float("nan"))
    expected = pages.clone()
    paged_kv_write_ref(expected, page_ids, keys, values)
    paged_kv_write_triton(pages, page_ids, keys, values)
    # NaN == NaN here: pages the call must not touch stay NaN in both.
    torch.testing.assert_close(pages, expected, equal_nan=True)
    assert not pages[page_ids].isnan().any()


@pytest.mark.parametrize("block_size", [16, 40], ids=["bs16", "bs40"])
def test_gather_matches_reference(block_size):
    pages = torch.randn(NUM_PAGES, 2, NUM_HEADS, block_size, HEAD_DIM)
    page_ids = torch.tensor([6, 2, 2, 0])
    for actual, expected in zip(paged_kv_gather_triton(pages, page_ids), paged_kv_gather_ref(pages, page_ids)):
        assert actual.is_contiguous()
        torch.testing.assert_close(actual, expected)


def test_no_pages_is_a_no_op():
    pages = torch.randn(NUM_PAGES, 2, NUM_HEADS, 16, HEAD_DIM)
    before, no_ids, no_kv = pages.clone(), torch.zeros(0, dtype=torch.long), torch.zeros(NUM_HEADS, 0, HEAD_DIM)
    paged_kv_write_triton(pages, no_ids, no_kv, no_kv)
    assert torch.equal(pages, before)
    for actual, expected in zip(paged_kv_gather_triton(pages, no_ids), paged_kv_gather_ref(pages, no_ids)):
        assert actual.shape == expected.shape == (NUM_HEADS, 0, HEAD_DIM)
