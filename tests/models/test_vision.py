"""Qwen3.5 vision-language prompts with images and videos, cached vs cold: the same image in the next turn
hits through it (the vision encoder skips it, positions equal a cold run's), another image behind the same
placeholder tokens never hits past the text before it, a new image after a cached one is the only one
encoded, and a hit never ends inside an image."""

import pytest
import torch

import hf_hybrid_cache as hhc
from cold_oracle import assert_same_as_cold, random_tokens
from hf_hybrid_cache.tiny import TINY_VISION_TOKENS, tiny_model

BLOCK_SIZE = 16
IMAGE_TOKENS = 16  # an 8x8-patch image after the 2x2 merge
PATCH_WIDTH = 96  # 3 channels x temporal patch 2 x 4 x 4 pixels


@pytest.fixture(scope="module")
def models():
    cold = tiny_model("qwen3_5_vl", seed=0)
    model = hhc.patch(tiny_model("qwen3_5_vl", seed=0))
    encoded_rows = []  # patches the vision encoder ran on, one entry per call
    model.model.visual.register_forward_pre_hook(lambda module, args: encoded_rows.append(args[0].shape[0]))
    return cold, model, encoded_rows


def pixels(num_rows: int, seed: int) -> torch.Tensor:
    return torch.randn(num_rows, PATCH_WIDTH, generator=torch.Generator().manual_seed(seed))


def image_tokens() -> torch.Tensor:
    ids = TINY_VISION_TOKENS
    return torch.tensor([ids["vision_start_token_id"], *[ids["image_token_id"]] * IMAGE_TOKENS, ids["vision_end_token_id"]])


def inputs(input_ids: torch.Tensor, images=(), video=None) -> dict:
    """generate's inputs as Qwen3.5's processor makes them: placeholders in input_ids, their types, pixels, grids."""
    input_ids = input_ids[None] if input_ids.ndim == 1 else input_ids
    types = (input_ids == TINY_VISION_TOKENS["image_token_id"]).int() + 2 * (input_ids == TINY_VISION_TOKENS["video_token_id"]).int()
    kwargs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), mm_token_type_ids=types)
    if images:
        kwargs.update(pixel_values=torch.cat(images), image_grid_thw=torch.tensor([[1, 8, 8]] * len(images)))
    if video is not None:
        kwargs.update(pixel_values_videos=video, video_grid_thw=torch.tensor([[2, 8, 8]]))
    return kwargs


def generate(model, kwargs, cache=None):
    return model.generate(**kwargs, past_key_values=cache, max_new_tokens=6, do_sample=False, pad_token_id=0,
                          output_logits=True, return_dict_in_generate=True)


def run(models, store, kwargs):
    """Cached run checked against a cold one; returns (output, cached tokens, rows the encoder ran on)."""
    cold, model, encoded_rows = models
    encoded_rows.clear()
    cache = hhc.HybridPrefixCache(model, store=store)
    output = generate(model, kwargs, cache)
    assert_same_as_cold(output, generate(cold, kwargs))
    store.check_invariants()
    return output, cache.num_cached_tokens, sum(encoded_rows)


@pytest.fixture
def store():
    return hhc.PrefixStore(block_size=BLOCK_SIZE, mamba_cache_mode="all", max_bytes=64 << 20)


def test_next_turn_hits_through_the_image_without_encoding_it(models, store):
    image = pixels(64, seed=1)
    turn1 = torch.cat([random_tokens(40, seed=1), image_tokens(), random_tokens(30, seed=2)])
    output, cached, encoded = run(models, store, inputs(turn1, [image]))
    assert (cached, encoded) == (0, 64)
    turn2 = torch.cat([output.sequences[0], random_tokens(20, seed=3)])
    _, cached, encoded = run(models, store, inputs(turn2, [image]))
    assert cached == 80 and cached > 40 + len(image_tokens())  # through the image and the text after it
    assert encoded == 0


def test_another_image_behind_the_same_tokens_hits_only_the_text_before_it(models, store):
    tokens = torch.cat([random_tokens(40, seed=1), image_tokens(), random_tokens(30, seed=2)])
    run(models, store, inputs(tokens, [pixels(64, seed=1)]))
    _, cached, encoded = run(models, store, inputs(tokens, [pixels(64, seed=2)]))
    assert (cached, encoded) == (32, 64)  # the last boundary before the image starts at token 40


def test_a_new_image_after_a_cached_one_is_the_only_one_encoded(models, store):
    first, second = pixels(64, seed=1), pixels(64, seed=2)
    head = torch.cat([random_tokens(40, seed=1), image_tokens(), random_tokens(30, seed=2)])
    run(models, store, inputs(head, [first]))
    both = torch.cat([head, image_tokens(), random_tokens(10, seed=4)])
    _, cached, encoded = run(models, store, inputs(both, [first, second]))
    assert (cached, encoded) == (80, 64)
    _, cached, encoded = run(models, store, inputs(both, [first, second]))
    assert (cached, encoded) == (112, 0)


def test_a_hit_never_ends_inside_an_image(models):
    store = hhc.PrefixStore(block_size=8, mamba_cache_mode="all", max_bytes=64 << 20)
    head = torch.cat([random_tokens(20, seed=1), image_tokens()])  # placeholders at 21..36, then vision_end
    run(models, store, inputs(torch.cat([head, random_tokens(5, seed=2)]), [pixels(64, seed=1)]))
    # Ending right after the image, the usable prefix stops at token 37: boundaries 24 and 32 have snapshots
    # but cut the image, whose features come whole. The hit stops at 16 and the image is encoded.
    _, cached, encoded = run(models, store, inputs(head, [pixels(64, seed=1)]))
    assert (cached, encoded) == (16, 64)


def test_videos_are_keyed_by_their_frames(models, store):
    ids = TINY_VISION_TOKENS
    frame = [ids["vision_start_token_id"], *[ids["video_token_id"]] * IMAGE_TOKENS, ids["vision_end_token_id"]]
    tokens = torch.cat([random_tokens(30, seed=1), torch.tensor([5, 6, *frame, 7, 8, *frame]), random_tokens(40, seed=7)])
    video, other_video = pixels(128, seed=5), pixels(128, seed=6)
    assert run(models, store, inputs(tokens, video=video))[1:] == (0, 128)
    assert run(models, store, inputs(tokens, video=video))[1:] == (96, 0)
    assert run(models, store, inputs(tokens, video=other_video))[1:] == (32, 128)


def test_text_only_prompt_after_an_image_prompt(models, store):
    """The model keeps mRoPE deltas from its last call: a hit must not reuse another prompt's."""
    run(models, store, inputs(torch.cat([random_tokens(40, seed=1), image_tokens(), random_tokens(30, seed=2)]),
                              [pixels(64, seed=1)]))
    _, cached, _ = run(models, store, inputs(torch.cat([random_tokens(40, seed=1), random_tokens(60, seed=9)])))
    assert cached == 32


def test_image_content_the_keys_cannot_see_runs_uncached(models, store):
    cold, model, _ = models
    tokens = torch.cat([random_tokens(40, seed=1), image_tokens(), random_tokens(30, seed=2)])
    kwargs = inputs(tokens, [pixels(64, seed=1)])
    run(models, store, kwargs)
    features = model.model.get_image_features(kwargs.pop("pixel_values"), kwargs["image_grid_thw"], return_dict=True)
    cache = hhc.HybridPrefixCache(model, store=store)
    output = generate(model, {**kwargs, "mm_encoder_outputs": {"image": features}}, cache)
    assert cache.num_cached_tokens == 0
    assert torch.equal(output.sequences, generate(cold, {**kwargs, "mm_encoder_outputs": {"image": features}}).sequences)
