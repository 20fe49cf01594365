"""ControlNet conditioning images: built-in ones, ControlNet 1.1's annotator networks, and missing weights."""

from __future__ import annotations

import numpy as np
import pytest
from diffusion_testkit import scene

from multipass.errors import FailedPrecondition, InvalidInput
from multipass_diffusion.preprocessors import Point, Preprocessors, draw_pose


@pytest.fixture(scope="module")
def preprocessors(model_root):
    return Preprocessors(model_root / "diffusion" / "preprocessors")


def test_canny_finds_the_edges_of_a_rectangle(preprocessors):
    image = scene(128, 96)
    edges = np.asarray(preprocessors.condition("canny", image, (128, 96)))
    assert edges.shape == (96, 128, 3)
    assert edges[:, :, 0].max() == 255
    assert edges[24, 43:85, 0].max() == 255  # top edge of the yellow rectangle
    assert edges[48, 50:75, 0].max() == 0  # inside it


def test_pose_from_keypoints_uses_openpose_colours():
    people = [[Point(1, 50, 20), Point(2, 35, 22), Point(5, 65, 22), Point(0, 50, 8)]]
    canvas = np.asarray(draw_pose(people, 100, 100))
    assert tuple(canvas[20, 50]) == (255, 85, 0)  # neck joint colour
    assert tuple(canvas[22, 35]) == (255, 170, 0)  # right shoulder
    assert canvas[90, 90].sum() == 0
    limb = canvas[21, 42]  # on the neck-right-shoulder limb, at 60 % brightness
    assert tuple(limb) == (153, 0, 0)


def test_pose_without_keypoints_or_image_is_invalid(preprocessors):
    with pytest.raises(InvalidInput, match="spec.image"):
        preprocessors.condition("pose", None, (64, 64))


def test_pose_from_a_photo_needs_the_pose_model(preprocessors, model_root):
    with pytest.raises(FailedPrecondition, match=r"preprocessors/pose/config\.json"):
        preprocessors.condition("pose", scene(), (64, 64))


@pytest.mark.parametrize(
    ("kind", "file"), [("depth", "depth/config.json"), ("lineart", "lineart/sk_model.pth")]
)
def test_missing_weights_name_the_file(preprocessors, kind, file):
    with pytest.raises(FailedPrecondition) as raised:
        preprocessors.condition(kind, scene(), (64, 64))
    assert str(raised.value).endswith(f"preprocessors/{file}, which is not installed")


def test_hed_runs_the_published_network_format(preprocessors):
    out = np.asarray(preprocessors.condition("hed", scene(), (64, 48)))
    assert out.shape == (48, 64, 3)
    assert np.array_equal(out[..., 0], out[..., 1])
    assert out.std() > 0


def test_mlsd_draws_straight_segments(preprocessors):
    out = np.asarray(preprocessors.condition("mlsd", scene(256, 192), (256, 192)))
    assert out.max() == 255
    column = out[:, 246:251, 0].max(axis=1)  # the white vertical stripe's edges
    assert (column == 255).sum() > 100


@pytest.mark.parametrize("kind", ["tile", "qr"])
def test_tile_and_qr_pass_the_image_through(preprocessors, kind):
    image = scene(64, 64)
    assert np.array_equal(np.asarray(preprocessors.condition(kind, image, (64, 64))), np.asarray(image))


def test_installed_lists_weighted_preprocessors(preprocessors):
    assert preprocessors.installed() == ["hed"]


def test_unknown_kind(preprocessors):
    with pytest.raises(InvalidInput, match="spec.controlnet"):
        preprocessors.condition("scribble", scene(), (64, 64))


@pytest.fixture(scope="module")
def with_pose_model(tmp_path_factory):
    """A tiny random ViTPose (the architecture of preprocessors/pose/, as transformers saves it)."""
    from transformers import (
        VitPoseBackboneConfig,
        VitPoseConfig,
        VitPoseForPoseEstimation,
        VitPoseImageProcessor,
    )

    root = tmp_path_factory.mktemp("preprocessors")
    backbone = VitPoseBackboneConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=[64, 48],
        patch_size=[8, 8],
        out_indices=[1],
    )
    VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=17)).save_pretrained(
        root / "pose"
    )
    VitPoseImageProcessor(size={"height": 64, "width": 48}).save_pretrained(root / "pose")
    return Preprocessors(root)


def test_pose_from_a_photo_of_several_people_is_one_skeleton_per_box(with_pose_model):
    photo = scene(256, 128)
    left, right = (8.0, 8.0, 100.0, 120.0), (150.0, 4.0, 250.0, 124.0)
    skeletons = with_pose_model._estimate_poses(photo, [left, right])
    assert len(skeletons) == 2 and all(len(points) >= 17 for points in skeletons)
    # The whole photo is one person without boxes; boxes with no area are left out.
    assert len(with_pose_model._estimate_poses(photo)) == 1
    assert len(with_pose_model._estimate_poses(photo, [left, (5.0, 5.0, 5.0, 60.0)])) == 1
    # Boxes are in the photo's pixels and follow it when the conditioning image is another size.
    drawn = np.asarray(with_pose_model.condition("pose", photo, (128, 64), person_boxes=[left, right]))
    assert drawn.shape == (64, 128, 3) and drawn.sum() > 0
