"""Images and videos in the prompts of Qwen3.5 vision-language models: what enters the block keys, and the
inputs generate needs after a hit that covers some of them.

Placeholder tokens are the same for every image, so the key of a block also digests the pixels and grid of
each image (or video) whose placeholders fall in it: another image behind the same tokens never hits past
the text before it. A hit never ends inside an image. After a hit, the cached images are not encoded again:
the vision encoder runs on the others only (their features are handed to generate as `mm_encoder_outputs`),
and the 3D positions (mRoPE) are computed over the whole prompt and every grid, as in a cold run.
Checked with transformers 5.24 (`Qwen3_5ForConditionalGeneration`, `Qwen3_5MoeForConditionalGeneration`).
"""

from dataclasses import dataclass

import torch

from ..store.hashing import content_digest
from .keying import PromptKeying

VISION_MODEL_TYPES = ("qwen3_5", "qwen3_5_moe")
# Inputs that carry image content the keys cannot see: a request with them runs uncached.
UNKEYED_VISION_INPUTS = ("mm_encoder_outputs", "inputs_embeds", "image_embeds", "video_embeds")
MODALITIES = {"image": ("pixel_values", "image_grid_thw"), "video": ("pixel_values_videos", "video_grid_thw")}


@dataclass(frozen=True)
class MediaItem:
    """One image or video of a prompt. Its placeholders span tokens `[start, end)` (a video's frames are
    separated by timestamp text inside that span); its patches are `rows` of the modality's pixel tensor."""

    modality: str
    index: int
    start: int
    end: int
    rows: slice
    digest: bytes


def is_vision_model(model: torch.nn.Module) -> bool:
    return model.config.model_type in VISION_MODEL_TYPES and hasattr(getattr(model, "model", None), "get_rope_index")


class MediaKeying(PromptKeying):
    """A prompt's images and videos (`items`, in prompt order) in its block keys, hit points and inputs."""

    def __init__(self, items: list[MediaItem], model_state: bytes = b""):
        super().__init__(model_state)
        self.items = items

    def block_extras(self, block_size: int) -> dict[int, bytes]:
        """Block index -> the digests of the items whose placeholders fall in that block."""
        extras: dict[int, bytes] = {}
        for item in self.items:
            for block_idx in range(item.start // block_size, (item.end - 1) // block_size + 1):
                extras[block_idx] = extras.get(block_idx, b"") + item.digest
        return extras

    def may_end_after(self, block_size: int, num_blocks: int) -> set[int]:
        """No boundary strictly inside an item: its features come whole."""
        return {n for n in range(1, num_blocks + 1) if not any(item.start < n * block_size < item.end for item in self.items)}

    def inputs_after_hit(self, model, kwargs: dict, num_cached_tokens: int) -> dict:
        """Positions are recomputed from the whole prompt and every grid (the model keeps `rope_deltas` from
        its last call, which may belong to another prompt). Cached items are not encoded again."""
        forget_positions(model)
        cached = [item for item in self.items if item.end <= num_cached_tokens]
        if not cached:
            return kwargs
        kwargs = dict(kwargs)
        encoder_outputs = {}
        for modality, (pixels_name, grid_name) in MODALITIES.items():
            pixels = kwargs.pop(pixels_name, None)
            todo = [item for item in self.items if item.modality == modality and item.start >= num_cached_tokens]
            if todo:
                rows = torch.cat([torch.arange(item.rows.start, item.rows.stop) for item in todo]).to(pixels.device)
                grids = kwargs[grid_name][[item.index for item in todo]]
                encode = model.model.get_image_features if modality == "image" else model.model.get_video_features
                encoder_outputs[modality] = encode(pixels[rows], grids, return_dict=True)
        if encoder_outputs:
            kwargs["mm_encoder_outputs"] = encoder_outputs
        return kwargs


def forget_positions(model: torch.nn.Module) -> None:
    """Make a vision model compute its mRoPE positions from the whole prompt at the next generate: it keeps
    `rope_deltas` from its last call, which may belong to another prompt, and reuses them whenever the cache
    already holds tokens (a restored prefix)."""
    if is_vision_model(model):
        model.model.rope_deltas = None


def media_keying(model, input_ids: torch.Tensor, kwargs: dict, model_state: bytes = b"") -> MediaKeying | None:
    """The images and videos of a batch-1 prompt `input_ids` `[1, seq_len]`; None when the placeholders
    cannot be matched to the pixels given (the request then runs uncached, and generate raises its own error
    if the inputs are inconsistent)."""
    if any(kwargs.get(name) is not None for name in UNKEYED_VISION_INPUTS):
        return None
    config, merge = model.config, model.config.vision_config.spatial_merge_size
    token_ids = {"image": config.image_token_id, "video": config.video_token_id}
    items = []
    for modality, (pixels_name, grid_name) in MODALITIES.items():
        runs = _runs(input_ids[0] == token_ids[modality])
        pixels, grids = kwargs.get(pixels_name), kwargs.get(grid_name)
        if not runs:
            continue
        if pixels is None or grids is None:
            return None
        runs, first_row = iter(runs), 0
        for index, grid in enumerate(grids.tolist()):
            # An image is one run of placeholders; a video one run per temporal patch (frame group).
            frames, height, width = grid if modality == "video" else (1, grid[0] * grid[1], grid[2])
            item_runs = [next(runs, None) for _ in range(frames)]
            if None in item_runs or any(end - start != height * width // merge**2 for start, end in item_runs):
                return None
            num_rows = grid[0] * grid[1] * grid[2]
            rows = slice(first_row, first_row + num_rows)
            patches = pixels[rows].detach().to("cpu").contiguous()
            digest = content_digest(modality.encode(), torch.tensor(grid).numpy().tobytes(), patches.view(torch.uint8).numpy().tobytes())
            items.append(MediaItem(modality, index, item_runs[0][0], item_runs[-1][1], rows, digest))
            first_row += num_rows
        if next(runs, None) is not None or first_row != pixels.shape[0]:
            return None
    return MediaKeying(sorted(items, key=lambda item: item.start), model_state)


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """`[start, end)` of each run of True in a 1D bool tensor."""
    edges = torch.diff(mask.to(torch.int8), prepend=mask.new_zeros(1, dtype=torch.int8), append=mask.new_zeros(1, dtype=torch.int8))
    starts, ends = (edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist()
    return list(zip(starts, ends))
