"""The engine-level bench pieces compute what they claim, on the tiny models and small sizes (no timing
thresholds: only that the figures are positive finite numbers and the comparisons are like for like)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from multipass_bench import engine_bench, memory_bench, parallel_bench, workload
from multipass_bench.timing import is_positive_finite

MODELS_ROOT = Path(__file__).resolve().parents[2] / ".multipass" / "test-models"


@pytest.fixture(scope="module")
def model_root() -> Path:
    workload.set_threads(1)
    return workload.ensure_models(MODELS_ROOT)


@pytest.fixture(scope="module")
def engine(model_root):
    return workload.make_engine(model_root, working_size=64)


@pytest.fixture(scope="module")
def loras(model_root, tmp_path_factory):
    return workload.write_loras(model_root, tmp_path_factory.mktemp("bench-loras"))


def test_area_box_covers_the_asked_fraction():
    x0, y0, x1, y1 = workload.area_box((1024, 1024), 0.20)
    assert abs((x1 - x0) * (y1 - y0) / 1024**2 - 0.20) < 0.002
    assert 0 <= x0 < x1 <= 1024 and 0 <= y0 < y1 <= 1024
    left = workload.area_box((512, 512), 0.15, centre_x=0.27)
    right = workload.area_box((512, 512), 0.15, centre_x=0.73)
    assert left[2] < right[0]


def test_crop_vs_full_compares_equal_steps_at_different_sizes(engine):
    speedup, details = engine_bench.crop_vs_full(engine, image_side=256, repetitions=1)
    assert is_positive_finite(speedup)
    assert details["steps_run"] == 10  # 20 steps at strength 0.5, on both sides
    assert details["full_working_size"] == "256x256"
    assert details["crop_working_size"] == "64x64"
    assert abs(details["person_area_fraction"] - 0.20) < 0.01
    assert len(details["full_seconds"]) == len(details["crop_seconds"]) == 1


def test_lora_switch_reports_both_fractions_and_leaves_no_adapter_active(engine, loras):
    fraction, details = engine_bench.lora_switch(engine, loras, repetitions=2, side=64)
    assert is_positive_finite(fraction)
    assert fraction == pytest.approx(details["cached_fraction"], rel=1e-3)
    assert is_positive_finite(details["disk_fraction"]) and is_positive_finite(details["disk_over_cached"])
    assert len(details["activation_seconds_cached"]) == len(details["activation_seconds_disk"]) == 4
    cache = engine.runtime(workload.SD15).adapters
    assert cache.active == ()
    assert cache.budget_bytes == engine.settings.adapter_memory_mb * 1024 * 1024


def test_pass_cache_speedup_reuses_base_and_first_person(engine, loras):
    speedup, details = engine_bench.pass_cache_speedup(engine, loras, side=64, repetitions=1)
    assert is_positive_finite(speedup)
    assert details["changed_job_cache_hits"] == [True, True, False]
    assert engine.cache is None  # the bench's cache was only lent to the engine


def test_two_person_job_runs_base_then_each_person_on_the_updated_image(engine, loras):
    outputs = engine_bench.two_person_job(engine, loras, seed=3, prompts=("a", "b"), side=64, steps=4)
    assert [o.image.size for o in outputs] == [(64, 64)] * 3
    assert [o.metadata.get("task") for o in outputs] == ["txt2img", "inpaint", "inpaint"]
    assert outputs[1].metadata["adapters"] != outputs[2].metadata["adapters"]
    engine.runtime(workload.SD15).adapters.deactivate()


def test_composite_takes_each_output_inside_its_paste_mask():
    base = np.zeros((4, 6, 3), dtype=np.uint8)
    first = np.full_like(base, 10)
    second = np.full_like(base, 20)
    left = np.zeros((4, 6), dtype=np.uint8)
    left[:, :2] = 255
    right = np.zeros((4, 6), dtype=np.uint8)
    right[1:3, 4:] = 128
    result = parallel_bench.composite(base, [first, second], [left, right])
    assert (result[:, :2] == 10).all()
    assert (result[1:3, 4:] == 20).all()
    assert (result[:, 2:4] == 0).all() and (result[0, 4:] == 0).all()
    with pytest.raises(ValueError):
        parallel_bench.composite(base, [first, second], [left, left])


def test_independence_needs_crops_clear_of_the_other_paste_mask():
    alpha = [np.zeros((10, 10), dtype=np.uint8), np.zeros((10, 10), dtype=np.uint8)]
    alpha[0][2:5, 1:3] = 255
    alpha[1][2:5, 7:9] = 255
    assert parallel_bench.independent([(0, 0, 4, 10), (6, 0, 10, 10)], alpha)
    assert not parallel_bench.independent([(0, 0, 8, 10), (6, 0, 10, 10)], alpha)


def test_parallel_persons_composite_equals_the_sequential_result(model_root):
    speedup, details = parallel_bench.parallel_persons(model_root, repetitions=1, working_size=64)
    assert is_positive_finite(speedup)
    assert details["composite_equals_sequential"] is True
    assert parallel_bench.independent(
        [tuple(b) for b in details["crop_boxes"]],
        parallel_bench.paste_masks(
            parallel_bench.person_specs(),
            [workload.box_mask(parallel_bench.IMAGE_SIZE, b) for b in parallel_bench.PERSON_BOXES],
        ),
    )
    assert len(details["cpu_parallel_capacity"]) == 1


def test_shared_components_memory_builds_every_pipeline_without_new_weights(model_root):
    ratio, details = memory_bench.shared_components_memory(model_root, repetitions=1, calibrate=False)
    assert is_positive_finite(ratio)
    assert details["pipelines_built"] == 6  # txt2img, img2img, inpaint, each with and without ControlNet
    assert details["parameter_bytes_distinct_all"] == details["parameter_bytes_distinct_one"]
    assert details["parameter_bytes_if_not_shared"] > details["parameter_bytes_distinct_all"]
