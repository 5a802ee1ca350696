"""Paged K/V copies for CPU tensors in plain PyTorch: one `index_copy_` / `index_select` per call.

Same contract as `paged_kv_write_ref` / `paged_kv_gather_ref` in `reference.py`; the Triton kernels live
in `paged_triton.py`.
"""

import torch


def paged_kv_write_cpu(pages, page_ids, keys, values) -> None:
    """pages `[num_pages, 2, H, block_size, D]` written in place; keys, values `[H, n * block_size, D]`."""
    num_heads, _, head_dim = keys.shape
    block_size, num_blocks = pages.shape[3], page_ids.numel()
    blocks = torch.stack([keys, values]).reshape(2, num_heads, num_blocks, block_size, head_dim)
    pages.index_copy_(0, page_ids, blocks.permute(2, 0, 1, 3, 4))


def paged_kv_gather_cpu(pages, page_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """pages `[num_pages, 2, H, block_size, D]`, page_ids `[n]` -> keys, values `[H, n * block_size, D]`."""
    _, _, num_heads, block_size, head_dim = pages.shape
    blocks = pages.index_select(0, page_ids).permute(1, 2, 0, 3, 4)
    kv = blocks.reshape(2, num_heads, page_ids.numel() * block_size, head_dim)
    return kv[0], kv[1]
