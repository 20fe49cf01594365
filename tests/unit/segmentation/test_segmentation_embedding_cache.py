"""SAM embeddings are computed once per image and reused for every prompt on it."""

from __future__ import annotations

import numpy as np

from multipass_segmentation.sam_masks import SamEngine, image_key
from multipass_segmentation.segmenter import TextMaskSpec
from multipass_segmentation.slots import Box, Slot


def image(seed: int, shape=(96, 128, 3)) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


def test_key_depends_on_pixels_and_shape():
    a = image(1)
    assert image_key(a) == image_key(a.copy())
    b = a.copy()
    b[0, 0, 0] ^= 1
    assert image_key(a) != image_key(b)
    flat = np.zeros((4, 6, 3), dtype=np.uint8)
    assert image_key(flat) != image_key(np.zeros((6, 4, 3), dtype=np.uint8))


def test_same_image_is_embedded_once(tiny_models):
    engine = SamEngine(tiny_models.sam, cache_size=4)
    first = engine.embed(image(1))
    second = engine.embed(image(1))
    assert second is first
    assert (engine.stats.hits, engine.stats.misses) == (1, 1)


def test_cached_embedding_gives_the_same_masks_as_a_fresh_one(tiny_models):
    cached_engine = SamEngine(tiny_models.sam, cache_size=4)
    picture = image(2)
    embedding = cached_engine.embed(picture)
    cached_engine.embed(image(3))  # the predictor now holds another image's features
    again = cached_engine.predict(cached_engine.embed(picture), box=(10, 10, 90, 80))
    fresh_engine = SamEngine(tiny_models.sam, cache_size=4)
    fresh = fresh_engine.predict(fresh_engine.embed(picture), box=(10, 10, 90, 80))
    assert np.allclose(again.logits, fresh.logits, atol=1e-5)
    assert again.score == fresh.score
    assert cached_engine.embed(picture) is embedding


def test_least_recently_used_embedding_is_evicted(tiny_models):
    engine = SamEngine(tiny_models.sam, cache_size=2)
    engine.embed(image(1))
    engine.embed(image(2))
    engine.embed(image(1))  # hit: 1 becomes most recent
    engine.embed(image(3))  # evicts 2
    engine.embed(image(1))  # hit
    engine.embed(image(2))  # miss again
    assert (engine.stats.hits, engine.stats.misses) == (2, 4)


def test_all_slots_and_text_prompts_on_one_image_share_one_embedding(segmenter):
    picture = image(4, shape=(120, 200, 3))
    slots = [Slot(0, Box(5, 5, 70, 115)), Slot(1, Box(60, 5, 130, 115)), Slot(2, Box(130, 5, 195, 115))]
    segmenter.person_masks(picture, slots)
    segmenter.text_mask(
        picture, TextMaskSpec("person", negative="hair", box_threshold=0.01, text_threshold=0.01)
    )
    segmenter.person_masks(picture, slots[:1])
    assert segmenter.sam.stats.misses == 1
    assert segmenter.sam.stats.hits == 3  # text prompt, text negative, second person request


def test_warm_up_leaves_the_cache_empty(segmenter):
    segmenter.warm_up()
    assert (segmenter.sam.stats.hits, segmenter.sam.stats.misses) == (0, 0)
    segmenter.sam.embed(image(5))
    assert segmenter.sam.stats.misses == 1
