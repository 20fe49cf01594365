"""The composite pass: parallel person passes merged onto their stage's input equal the sequential result."""

from __future__ import annotations

import numpy as np
import pytest
from diffusion_testkit import box_mask, scene, spec
from PIL import Image

from multipass.crop_geometry import mask_box, person_crop_box
from multipass.errors import InvalidInput
from multipass.v1 import common_pb2, diffusion_pb2, segmentation_pb2
from multipass_diffusion.imaging.crop_inpaint import feather
from multipass_diffusion.passes.context import PassInputs
from multipass_gateway.domain import person_stages

SIZE = (384, 128)
LEFT = (16, 32, 48, 96)
RIGHT = (336, 32, 368, 96)


def person(prompt: str) -> diffusion_pb2.PassSpec:
    return spec(
        kind="person",
        prompt=prompt,
        width=SIZE[0],
        height=SIZE[1],
        crop_padding=8,
        crop_factor=1.0,
        mask_blur=2.0,
        denoising_strength=0.6,
    )


def composite_spec(count: int, mask_blur: float = 2.0) -> diffusion_pb2.PassSpec:
    composite = spec(kind="composite", prompt="", width=SIZE[0], height=SIZE[1])
    for number in range(count):
        composite.layers.add(
            image=common_pb2.ImageRef(key=f"person-{number}.png"),
            mask=common_pb2.ImageRef(key=f"mask-{number}.png"),
            mask_blur=mask_blur,
        )
    return composite


def mask_result(index: int, mask: Image.Image) -> segmentation_pb2.MaskResult:
    box = mask_box(np.asarray(mask), 127)
    return segmentation_pb2.MaskResult(
        index=index,
        label=f"person-{index}",
        mask=common_pb2.ImageRef(key=f"mask-{index}.png", width=mask.width, height=mask.height),
        box=common_pb2.Box(x0=box.x0, y0=box.y0, x1=box.x1, y1=box.y1),
    )


def test_parallel_persons_then_composite_equal_sequential_byte_for_byte(engine):
    image = scene(*SIZE)
    masks = [box_mask(SIZE, LEFT), box_mask(SIZE, RIGHT)]
    specs = [person("ohwx woman, red dress"), person("ohwx man, black suit")]
    prints = [
        person_stages.footprint(mask_result(i, m), s, engine.settings.working_size_for("sd15"))
        for i, (m, s) in enumerate(zip(masks, specs, strict=True))
    ]
    assert person_stages.independent(*prints)  # the gateway would run these two in parallel

    first = engine.run(specs[0], PassInputs(image=image, mask=masks[0])).image
    sequential = engine.run(specs[1], PassInputs(image=first, mask=masks[1])).image

    outputs = [
        engine.run(s, PassInputs(image=image, mask=m)).image for s, m in zip(specs, masks, strict=True)
    ]
    merged = engine.run(
        composite_spec(2), PassInputs(image=image, layers=list(zip(outputs, masks, strict=True)))
    )
    assert not merged.cache_hit and merged.steps_run == 0
    assert merged.metadata["layers"] == "2"
    result = np.asarray(merged.image)
    assert np.array_equal(result, np.asarray(sequential))
    changed = np.any(result != np.asarray(image), axis=2)
    assert changed[LEFT[1] : LEFT[3], LEFT[0] : LEFT[2]].any()
    assert changed[RIGHT[1] : RIGHT[3], RIGHT[0] : RIGHT[2]].any()


def test_composite_copies_each_layer_exactly_where_its_feathered_mask_is_non_zero(engine):
    base = Image.new("RGB", SIZE, (10, 20, 30))
    layer = Image.new("RGB", SIZE, (200, 100, 50))
    mask = box_mask(SIZE, LEFT)
    result = np.asarray(engine.run(composite_spec(1), PassInputs(image=base, layers=[(layer, mask)])).image)
    region = feather(np.asarray(mask), 2.0) > 0
    assert (result[region] == (200, 100, 50)).all()
    assert (result[~region] == (10, 20, 30)).all()
    assert region.sum() > (LEFT[2] - LEFT[0]) * (LEFT[3] - LEFT[1])  # the feather widens the mask


def test_overlapping_layers_and_wrong_sizes_are_refused(engine):
    base = scene(*SIZE)
    masks = [box_mask(SIZE, (10, 10, 60, 60)), box_mask(SIZE, (50, 10, 100, 60))]
    with pytest.raises(InvalidInput, match="overlaps"):
        engine.run(composite_spec(2), PassInputs(image=base, layers=[(base, m) for m in masks]))
    small = box_mask((64, 64), (0, 0, 8, 8))
    with pytest.raises(InvalidInput, match=r"spec.layers\[0\].mask"):
        engine.run(composite_spec(1), PassInputs(image=base, layers=[(base, small)]))
    with pytest.raises(InvalidInput, match="spec.image"):
        engine.run(composite_spec(1), PassInputs(layers=[(base, masks[0])]))
    with pytest.raises(InvalidInput, match="spec.model"):
        engine.run(diffusion_pb2.PassSpec(kind="composite", model="nope"), PassInputs(image=base))


def test_the_worker_advertises_the_composite_pass(engine):
    assert "pass:composite" in engine.capabilities()


@pytest.mark.parametrize("seed", range(6))
def test_the_gateways_prediction_contains_the_workers_crop_and_paste_region(seed):
    """The gateway sees only the mask's tight box: its boxes must contain what the worker really uses."""
    rng = np.random.default_rng(seed)
    width, height = 320, 192
    mask = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        x, y = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        mask[y : y + int(rng.integers(1, 60)), x : x + int(rng.integers(1, 60))] = 255
    blur = float(rng.choice([0.0, 1.5, 4.0, 7.0]))
    working = int(rng.choice([64, 512]))
    pass_spec = diffusion_pb2.PassSpec(
        kind="person",
        width=int(rng.choice([256, 512])),
        height=256,
        crop_padding=int(rng.integers(0, 40)),
        crop_factor=float(rng.choice([0.0, 1.3])),
        mask_blur=blur,
    )
    alpha = feather(mask, blur or 4.0)
    worker_crop = person_crop_box(
        mask_box(alpha),
        width,
        height,
        crop_padding=pass_spec.crop_padding,
        crop_factor=pass_spec.crop_factor,
        spec_width=pass_spec.width,
        spec_height=pass_spec.height,
        working_size=working,
    )
    predicted = person_stages.footprint(mask_result(0, Image.fromarray(mask)), pass_spec, working)
    assert predicted.support.contains(mask_box(alpha))
    assert predicted.crop.contains(worker_crop)
