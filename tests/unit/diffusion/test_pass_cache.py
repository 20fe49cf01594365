"""The pass cache: hits skip the work and return the same bytes; anything that matters changes the key."""

from __future__ import annotations

import pytest
from diffusion_testkit import SDXL_MODEL, scene, spec
from PIL import Image

from multipass.images import encode_png
from multipass_diffusion import metrics
from multipass_diffusion.engine import Engine
from multipass_diffusion.pass_cache import MemoryPassCache
from multipass_diffusion.passes.context import PassInputs


@pytest.fixture
def cached_engine(engine, settings):
    """A second engine on the same loaded models, with an in-memory cache."""
    with_cache = Engine(settings, cache=MemoryPassCache(8))
    with_cache.runtimes = engine.runtimes
    return with_cache


def test_a_hit_returns_the_stored_image_without_running(cached_engine):
    hits = metrics.PASS_CACHE_HITS._value.get()
    first = cached_engine.run(spec())
    steps = []
    second = cached_engine.run(spec(), progress=lambda s, t: steps.append(s))
    assert not first.cache_hit and second.cache_hit
    assert steps == [] and second.steps_run == 0
    assert encode_png(second.image) == encode_png(first.image)
    assert second.spec_hash == first.spec_hash
    assert metrics.PASS_CACHE_HITS._value.get() == hits + 1


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "a blue house"},
        {"seed": 8},
        {"steps": 5},
        {"scheduler": "euler"},
        {"width": 72},
        {"model": SDXL_MODEL},
        {"use_lpw": True},
    ],
)
def test_anything_that_determines_the_output_changes_the_key(cached_engine, change):
    cached_engine.run(spec())
    changed = dict(change)
    if "width" in changed:
        changed["height"] = 64
    assert not cached_engine.run(spec(**changed)).cache_hit


def test_input_image_pixels_are_part_of_the_key(cached_engine):
    image = scene(64, 64)
    assert not cached_engine.run(spec(denoising_strength=0.5), PassInputs(image=image)).cache_hit
    assert cached_engine.run(spec(denoising_strength=0.5), PassInputs(image=image.copy())).cache_hit
    other = image.copy()
    other.putpixel((0, 0), (1, 2, 3))
    assert not cached_engine.run(spec(denoising_strength=0.5), PassInputs(image=other)).cache_hit


def test_a_tenants_cached_passes_never_answer_another_tenants(cached_engine):
    """One tenant's output is no cache hit for another (a hit would tell it the prompt and seed were run)."""
    first = cached_engine.run(spec(seed=4242), PassInputs(cache_scope="tenant-a"))
    assert cached_engine.run(spec(seed=4242), PassInputs(cache_scope="tenant-a")).cache_hit
    other = cached_engine.run(spec(seed=4242), PassInputs(cache_scope="tenant-b"))
    assert not other.cache_hit and other.spec_hash != first.spec_hash
    assert encode_png(other.image) == encode_png(first.image)  # the same work, run again


def test_memory_cache_is_a_bounded_lru():
    cache = MemoryPassCache(2)
    images = [Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(3)]
    cache.put("a", images[0])
    cache.put("b", images[1])
    assert cache.get("a").getpixel((0, 0)) == (0, 0, 0)
    cache.put("c", images[2])
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    assert len(cache) == 2


class LookupCache:
    """A cache whose reads are round trips (as the store's): ``lookup`` answers through a future."""

    def __init__(self, answer):
        self.answer = answer
        self.keys: list[str] = []

    def lookup(self, key: str):
        import concurrent.futures

        self.keys.append(key)
        future = concurrent.futures.Future()
        if self.answer is not None:
            future.set_result(self.answer)
        return future

    def put(self, key: str, image) -> None:
        pass


def test_a_store_lookup_runs_beside_the_pass_and_a_hit_stops_it_at_the_next_check(engine, settings):
    plain = engine.run(spec())
    hit_engine = Engine(settings, cache=LookupCache(plain.image))
    hit_engine.runtimes = engine.runtimes
    steps = []
    found = hit_engine.run(spec(), progress=lambda s, t: steps.append(s))
    assert found.cache_hit and encode_png(found.image) == encode_png(plain.image)
    assert found.steps_run == 0 and steps == []  # an answered lookup is seen at the pass's first check
    never = Engine(settings, cache=LookupCache(None))  # a lookup that has not answered: the pass runs
    never.runtimes = engine.runtimes
    ran = never.run(spec())
    assert not ran.cache_hit and encode_png(ran.image) == encode_png(plain.image)
    assert never.cache.keys == [found.spec_hash]
