"""Chained block digests: the keys of the prefix store.

A block's key digests its parent's key and its own token ids, so equal keys mean equal whole prefixes.
The chain starts from a root that digests the model fingerprint (`fingerprint.py`), the namespace and the
model's runtime state (peft adapters).
"""

import hashlib

import numpy as np
import torch

DIGEST_SIZE = 16  # 128-bit keys: collisions are out of reach for any store that fits in memory


def digest(*parts: bytes) -> bytes:
    """BLAKE2b of the parts, each length-prefixed."""
    hasher = hashlib.blake2b(digest_size=DIGEST_SIZE)
    for part in parts:
        # Length-prefix each part so that ("ab", "c") and ("a", "bc") never digest alike.
        hasher.update(len(part).to_bytes(8, "little"))
        hasher.update(part)
    return hasher.digest()


def root_key(model_fingerprint: bytes, namespace: str | None, model_state: bytes = b"") -> bytes:
    """The key every chain starts from: entries of different models, namespaces or model states (peft
    adapters active, disabled, merged: `models/peft_state.py`) never meet."""
    # No namespace and the empty namespace "" are distinct tenants: the tag byte keeps them apart.
    tagged = b"-" if namespace is None else b"=" + namespace.encode()
    # Without a model state the root is what it was before states were keyed: saved stores still hit.
    extra = (model_state,) if model_state else ()
    return digest(b"hf_hybrid_cache/root", model_fingerprint, tagged, *extra)


def block_keys(
    root: bytes, token_ids: torch.Tensor, block_size: int, block_extras: dict[int, bytes] | None = None
) -> list[bytes]:
    """Keys of the complete blocks of `token_ids` (`[num_tokens]` int), in order; a partial tail has none.

    `block_extras` maps a block index to more content its key must digest: the digests of the images whose
    placeholder tokens fall in the block (the tokens alone are the same for every image).
    """
    token_bytes = token_ids.detach().to("cpu", torch.int64).numpy().tobytes()
    stride = block_size * 8
    keys, parent = [], root
    for block_idx in range(len(token_ids) // block_size):
        parts = [parent, token_bytes[block_idx * stride : (block_idx + 1) * stride]]
        if block_extras and block_idx in block_extras:
            parts.append(block_extras[block_idx])
        parent = digest(*parts)
        keys.append(parent)
    return keys


def extend_block_keys(keys: list[bytes], root: bytes, token_ids: list[int], block_size: int, num_blocks: int) -> list[bytes]:
    """`keys`, the keys of the first blocks of `token_ids` (a list, as continuous batching holds a request's
    tokens), extended in place to its first `num_blocks` blocks: the keys `block_keys` gives."""
    parent = keys[-1] if keys else root
    for block_idx in range(len(keys), num_blocks):
        tokens = np.asarray(token_ids[block_idx * block_size : (block_idx + 1) * block_size], dtype=np.int64)
        parent = digest(parent, tokens.tobytes())
        keys.append(parent)
    return keys


def content_digest(*parts: bytes) -> bytes:
    """The digest of some content (an image's pixels and grid), to be mixed into block keys."""
    return digest(b"hf_hybrid_cache/content", *parts)
