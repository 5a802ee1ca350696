"""Paged K/V copies in Triton: whole blocks of contiguous K/V into pages, and pages back into contiguous K/V.

pages is `[num_pages, 2, H, block_size, D]` (index 0 keys, 1 values). Imports triton: load it lazily
(see `dispatch.py`). Arguments are checked in `checks.py` first.
"""

import torch
import triton
import triton.language as tl

from .launch import check_contiguous, check_device

BLOCK_S = 32


@triton.jit
def _page_offsets(pages, page_ids, i_n, i_h, o_s, o_d, H, S: tl.constexpr, D: tl.constexpr):
    """Pointers `[BS, BD]` to rows o_s of head i_h's keys in page page_ids[i_n]; values lie H * S * D further."""
    # page_ids is int64, so these offsets are too: a large pool exceeds 2^31 elements.
    i_page = tl.load(page_ids + i_n)
    return pages + ((i_page * 2 * H + i_h) * S + o_s[:, None]) * D + o_d[None, :]


@triton.jit
def paged_kv_write_kernel(
    pages, page_ids, keys, values, stride_kh, stride_kt, stride_kd, stride_vh, stride_vt, stride_vd, H,
    S: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr,
):
    """pages[page_ids[n], :, h, s] = (keys, values)[h, n * S + s]. Grid: (cdiv(S, BS), n, H)."""
    i_s, i_n, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_s, o_d = i_s * BS + tl.arange(0, BS), tl.arange(0, BD)
    m = (o_s < S)[:, None] & (o_d < D)[None, :]
    o_t = i_n * S + o_s[:, None]
    p_keys = keys + i_h * stride_kh + o_t * stride_kt + o_d[None, :] * stride_kd
    p_values = values + i_h * stride_vh + o_t * stride_vt + o_d[None, :] * stride_vd
    p_page = _page_offsets(pages, page_ids, i_n, i_h, o_s, o_d, H, S, D)
    tl.store(p_page, tl.load(p_keys, mask=m), mask=m)
    tl.store(p_page + H * S * D, tl.load(p_values, mask=m), mask=m)


@triton.jit
def paged_kv_gather_kernel(
    pages, page_ids, keys, values, H, S: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr,
):
    """(keys, values)[h, n * S + s] = pages[page_ids[n], :, h, s], outputs contiguous. Grid: (cdiv(S, BS), n, H)."""
    i_s, i_n, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_s, o_d = i_s * BS + tl.arange(0, BS), tl.arange(0, BD)
    m = (o_s < S)[:, None] & (o_d < D)[None, :]
    o_kv = ((i_h * tl.num_programs(1) + i_n) * S + o_s[:, None]) * D + o_d[None, :]
    p_page = _page_offsets(pages, page_ids, i_n, i_h, o_s, o_d, H, S, D)
    tl.store(keys + o_kv, tl.load(p_page, mask=m), mask=m)
    tl.store(values + o_kv, tl.load(p_page + H * S * D, mask=m), mask=m)


def _grid(pages: torch.Tensor, page_ids: torch.Tensor) -> tuple[int, int, int]:
    return triton.cdiv(pages.shape[3], BLOCK_S), page_ids.numel(), pages.shape[2]


def paged_kv_write_triton(pages, page_ids, keys, values) -> None:
    """Triton `paged_kv_write`; `pages` must be contiguous (written in place). keys, values may be strided."""
    check_device(paged_kv_write_kernel, pages=pages, page_ids=page_ids, keys=keys, values=values)
    check_contiguous(pages=pages)
    if page_ids.numel() == 0:
        return
    _, _, num_heads, block_size, head_dim = pages.shape
    paged_kv_write_kernel[_grid(pages, page_ids)](
        pages, page_ids.contiguous(), keys, values, *keys.stride(), *values.stride(), num_heads,
        S=block_size, D=head_dim, BS=BLOCK_S, BD=triton.next_power_of_2(head_dim),
    )


def paged_kv_gather_triton(pages, page_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton `paged_kv_gather`: returns contiguous keys, values `[H, n * block_size, D]`."""
    check_device(paged_kv_gather_kernel, pages=pages, page_ids=page_ids)
    check_contiguous(pages=pages)
    _, _, num_heads, block_size, head_dim = pages.shape
    keys = pages.new_empty((num_heads, page_ids.numel() * block_size, head_dim))
    values = torch.empty_like(keys)
    if page_ids.numel():
        paged_kv_gather_kernel[_grid(pages, page_ids)](
            pages, page_ids.contiguous(), keys, values, num_heads,
            S=block_size, D=head_dim, BS=BLOCK_S, BD=triton.next_power_of_2(head_dim),
        )
    return keys, values
