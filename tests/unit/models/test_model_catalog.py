"""The curated manifest and the feature check: what each profile turns on, fixes, the table, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from catalog_dirs import full_directory, write_profiles

from multipass.errors import InvalidInput
from multipass.model_catalog import features, layout
from multipass.model_catalog.manifest import MANIFEST_PATH, load_manifest, parse_manifest

REQUIRED_PROFILES = (
    "sd15", "sdxl", "controlnet-sd15", "sam", "grounding", "faces", "faceid", "upscaler", "face-restorer",
    "prompt-expander",
)  # fmt: skip
CLI = [sys.executable, "-m", "multipass_client.cli.main", "models"]


@pytest.fixture(scope="module")
def manifest():
    return load_manifest()


def test_the_curated_manifest_has_every_profile_and_is_well_formed(manifest):
    assert set(REQUIRED_PROFILES) <= set(manifest.profiles)
    assert manifest.source == MANIFEST_PATH
    for profile in manifest.profiles.values():
        assert profile.files and profile.licence and profile.size_mb > 0
        assert profile.command == f"multipass models pull {profile.name}"
    sd15 = {f.target: f for f in manifest.profiles["sd15"].files}
    # fp16 weights land under the names the loaders read; the inpainting UNet comes with the base model.
    unet = sd15["diffusion/sd15/unet/diffusion_pytorch_model.safetensors"]
    assert unet.path == "unet/diffusion_pytorch_model.fp16.safetensors"
    assert "diffusion/sd15/unet_inpaint/config.json" in sd15
    assert {f.repo for f in manifest.profiles["controlnet-sd15"].files} >= {
        "lllyasviel/control_v11p_sd15_openpose",
        "lllyasviel/control_v11p_sd15_canny",
        "lllyasviel/control_v11f1p_sd15_depth",
    }
    assert [f.target for f in manifest.profiles["faces"].files] == ["segmentation/faces/det_10g.onnx"]
    assert manifest.profiles["grounding"].files[0].repo == "IDEA-Research/grounding-dino-tiny"
    # A file shared by profiles (the face embedder) is one file with one target.
    shared = manifest.files(manifest.select(["faceid", "face-swap"]))
    assert [f.target for f in shared].count("diffusion/face_swapper/arcface.onnx") == 1


@pytest.mark.parametrize("name", sorted(load_manifest().profiles))
def test_each_profile_turns_on_the_features_it_names(tmp_path, manifest, name):
    """Its files, written where a pull writes them (with a base model of its family), satisfy the check."""
    profile = manifest.profiles[name]
    base = [manifest.profiles["sdxl" if profile.family == "sdxl" else "sd15"]] if profile.family else []
    model_dir = write_profiles(tmp_path, [*base, profile])
    report = features.check(model_dir, manifest=manifest).by_name()
    for feature in profile.features:
        assert report[feature].available and not report[feature].fallback, report[feature]
        assert report[feature].fix == ""


def test_a_directory_with_everything_has_every_feature_and_checks_fast(tmp_path, manifest):
    model_dir = full_directory(tmp_path, manifest)
    started = time.perf_counter()
    report = features.check(model_dir, manifest=manifest)
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0
    assert report.missing() == [] and not any(f.fallback for f in report.features)
    found = report.by_name()
    assert found["faces"].path == "segmentation/faces/det_10g.onnx"
    assert found["upscaler"].path == "diffusion/upscaler/RealESRGAN_x4plus.pth"
    assert found["base"].path == "diffusion/sd15, diffusion/sdxl"
    assert found["faceid"].detail == "for sd15, sdxl; reference faces aligned by their landmarks"
    assert found["face_swap"].path.endswith("diffusion/face_swapper/det_10g.onnx")


def test_an_empty_directory_names_the_pull_for_each_missing_feature(tmp_path, manifest):
    report = features.check(tmp_path, manifest=manifest).by_name()
    assert report["base"].fix == "multipass models pull sd15"
    assert report["inpaint"].fix == "multipass models pull sd15"
    assert report["controlnet:depth"].fix == "multipass models pull controlnet-sd15"
    assert report["preprocessor:pose"].fix == "multipass models pull controlnet-sd15"
    assert report["sam"].fix == "multipass models pull sam"
    assert report["text_masks"].fix == "multipass models pull grounding"
    assert report["faceid"].fix == "multipass models pull faceid"
    assert report["face_swap"].fix == "multipass models pull face-swap"
    assert report["upscaler"].fix == "multipass models pull upscaler"
    assert report["face_restorer"].fix == "multipass models pull face-restorer"
    assert report["prompt_expander"].fix == "multipass models pull prompt-expander"
    # Faces fall back to OpenCV's Haar cascade: available, marked so, with the upgrade.
    faces = report["faces"]
    assert (faces.available, faces.fallback, faces.status) == (True, True, "fallback")
    assert faces.fix == "multipass models pull faces" and "Haar" in faces.detail
    # Every ControlNet kind and every weighted preprocessor has a profile, so each is reported.
    assert report["controlnet:tile"].fix == "multipass models pull controlnet-sd15-extra"
    assert report["controlnet:qr"].fix == "multipass models pull controlnet-sd15-extra"
    assert report["preprocessor:hed"].fix == "multipass models pull controlnet-sd15-extra"
    assert report["preprocessor:lineart"].fix == "multipass models pull controlnet-sd15-extra"


def test_fixes_fit_the_family_of_the_models_installed(tmp_path, manifest):
    write_profiles(tmp_path, [manifest.profiles["sdxl"]])
    report = features.check(tmp_path, manifest=manifest).by_name()
    assert report["faceid"].fix == "multipass models pull faceid-sdxl"
    assert report["controlnet:pose"].fix == "multipass models pull controlnet-sdxl"
    # No SDXL profile for this kind: the feature is named without a command.
    assert report["controlnet:tile"].fix == ""
    # An SD1.5 ControlNet without an SD1.5 base model is not usable; the fix is the base model.
    write_profiles(tmp_path, [manifest.profiles["controlnet-sd15"]])
    pose = features.check(tmp_path, manifest=manifest).by_name()["controlnet:pose"]
    assert not pose.available and pose.fix == "multipass models pull sd15"
    assert "no sd15 base model" in pose.detail


def test_composition_needs_the_adapter_of_a_served_family_and_the_image_encoder(tmp_path, manifest):
    write_profiles(tmp_path, [manifest.profiles["sdxl"], manifest.profiles["composition"]])
    found = features.check(tmp_path, manifest=manifest).by_name()["controlnet:composition"]
    # The SD1.5 adapter does not serve an SDXL model: the SDXL pull is the fix.
    assert not found.available and found.fix == "multipass models pull composition-sdxl"
    write_profiles(tmp_path, [manifest.profiles["composition-sdxl"]])
    found = features.check(tmp_path, manifest=manifest).by_name()["controlnet:composition"]
    assert (
        found.available and "for sdxl" in found.detail and "diffusion/ip_adapter/image_encoder" in found.path
    )
    (tmp_path / "diffusion" / "ip_adapter" / "image_encoder" / "model.safetensors").unlink()
    found = features.check(tmp_path, manifest=manifest).by_name()["controlnet:composition"]
    assert not found.available and "diffusion/ip_adapter/image_encoder/model.safetensors" in found.detail


def test_ambiguous_and_alternative_layouts(tmp_path, manifest):
    upscaler = tmp_path / "diffusion" / "upscaler"
    upscaler.mkdir(parents=True)
    (upscaler / "a.pth").write_bytes(b"x")
    (upscaler / "b.safetensors").write_bytes(b"x")
    found = features.check(tmp_path, manifest=manifest).by_name()["upscaler"]
    assert not found.available and "keep exactly one" in found.detail
    (upscaler / "b.safetensors").unlink()
    (upscaler / "model_index.json").write_text("{}")  # a diffusers x4 upscaler wins
    found = features.check(tmp_path, manifest=manifest).by_name()["upscaler"]
    assert found.available and found.detail == "diffusers x4 upscaler"
    swapper = tmp_path / "diffusion" / "face_swapper"
    swapper.mkdir(parents=True)
    (swapper / "config.json").write_text(json.dumps({"swapper": "s.onnx", "embedder": "e.onnx"}))
    (swapper / "s.onnx").write_bytes(b"x")
    swap = features.check(tmp_path, manifest=manifest).by_name()["face_swap"]
    assert not swap.available and "diffusion/face_swapper/e.onnx" in swap.detail
    (swapper / "e.onnx").write_bytes(b"x")
    assert features.check(tmp_path, manifest=manifest).by_name()["face_swap"].available


def test_faceid_without_a_landmark_detector_is_a_fallback(tmp_path, manifest):
    write_profiles(tmp_path, [manifest.profiles["sd15"], manifest.profiles["faceid"]])
    (tmp_path / "diffusion" / "face_swapper" / "det_10g.onnx").unlink()
    faceid = features.check(tmp_path, manifest=manifest).by_name()["faceid"]
    assert (faceid.available, faceid.fallback) == (True, True)
    assert "central squares" in faceid.detail and faceid.fix == "multipass models pull faceid"


def test_capabilities_map_to_features_and_fixes():
    assert features.feature_of_capability("controlnet:pose") == "controlnet:pose"
    assert features.feature_of_capability("preprocessor:depth") == "preprocessor:depth"
    assert features.feature_of_capability("faceid:sd15-default") == "faceid"
    assert features.feature_of_capability("face_swapper") == "face_swap"
    assert features.feature_of_capability("inpaint_unet:x") == "inpaint"
    assert features.feature_of_capability("pass:hires") is None
    assert features.fix_command("faceid", "sdxl") == "multipass models pull faceid-sdxl"
    assert features.fix_command("controlnet:pose", "sdxl") == "multipass models pull controlnet-sdxl"
    assert features.fix_command("controlnet:lineart", "sdxl") == ""
    assert features.fix_command("controlnet:lineart", "sd15") == "multipass models pull controlnet-sd15-extra"
    assert features.fix_command("upscaler") == "multipass models pull upscaler"
    assert features.fix_command("controlnet:composition", "sdxl") == "multipass models pull composition-sdxl"
    assert features.feature_of_capability("controlnet:composition") == "controlnet:composition"
    assert features.feature_of_capability("controlnet:composition:sdxl-b") == "controlnet:composition"
    assert features.feature_of_capability("controlnet:nonsense:m") is None
    assert tuple(rule.name for rule in layout.RULES) == features.FEATURE_NAMES


def test_the_manifest_is_checked_field_by_field(tmp_path):
    data = {
        "schema": 1,
        "profiles": {
            "Bad Name": {"description": "", "licence": "x", "features": ["warp"], "size_mb": 0, "files": []},
            "ok": {
                "description": "d",
                "licence": "x",
                "features": ["sam"],
                "size_mb": 1,
                "files": [
                    {"repo": "no-slash", "revision": "main", "path": "a", "target": "segmentation/sam/a.pth"},
                    {"repo": "o/r", "revision": "main", "path": "../a", "target": "/etc/passwd"},
                    {"repo": "o/r", "revision": "main", "path": "a", "target": "elsewhere/a", "sha256": "XY"},
                    {
                        "repo": "o/r",
                        "revision": "main",
                        "path": "a",
                        "target": "segmentation/sam/b.pth",
                        "bytes": -1,
                    },
                ],
            },
        },
    }
    with pytest.raises(InvalidInput) as caught:
        parse_manifest(data, source=tmp_path / "m.toml", known_features=frozenset(features.FEATURE_NAMES))
    fields = {v.field for v in caught.value.violations}
    assert {
        "profiles.Bad Name",
        "profiles.Bad Name.description",
        "profiles.Bad Name.features",
        "profiles.Bad Name.size_mb",
        "profiles.Bad Name.files",
        "profiles.ok.files[0].repo",
        "profiles.ok.files[1].path",
        "profiles.ok.files[1].target",
        "profiles.ok.files[2].target",
        "profiles.ok.files[2].sha256",
        "profiles.ok.files[3].bytes",
    } <= fields
    warp = next(v for v in caught.value.violations if v.field == "profiles.Bad Name.features")
    assert "'warp'" in warp.description and "upscaler" in warp.description
    with pytest.raises(InvalidInput, match="expected one of"):
        load_manifest().select(["sd15", "sd9"])


def test_two_profiles_may_not_put_different_files_at_one_target(tmp_path):
    one = {"repo": "o/r", "revision": "main", "path": "a.pth", "target": "segmentation/sam/a.pth"}
    data = {
        "schema": 1,
        "profiles": {
            name: {"description": "d", "licence": "l", "features": ["sam"], "size_mb": 1, "files": [item]}
            for name, item in (("one", one), ("two", {**one, "path": "b.pth"}), ("same", one))
        },
    }
    with pytest.raises(InvalidInput) as caught:
        parse_manifest(data, source=tmp_path / "m.toml", known_features=frozenset(features.FEATURE_NAMES))
    assert [(v.field, v.description) for v in caught.value.violations] == [
        ("profiles.two.files[0].target", "segmentation/sam/a.pth is also a different file of profile one")
    ]


def test_models_check_cli_on_a_full_directory_prints_the_table_and_json(tmp_path, manifest):
    model_dir = full_directory(tmp_path / "full", manifest)
    started = time.perf_counter()
    table = subprocess.run(
        [*CLI, "check", "--dir", str(model_dir)], capture_output=True, text=True, check=True
    )
    elapsed = time.perf_counter() - started
    lines = table.stdout.splitlines()
    assert lines[0] == f"model directory: {model_dir}"
    assert lines[1].split() == ["FEATURE", "STATUS", "USES", "(OR", "WHY", "NOT)", "FIX"]
    assert lines[-1] == f"{len(lines) - 3} of {len(lines) - 3} features available"
    print(f"\nmodels check (CLI, full directory): {elapsed:.2f} s")
    empty = subprocess.run(
        [*CLI, "check", "--json"], capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin", "MULTIPASS_MODEL_DIR": str(tmp_path / "empty")},
    )  # fmt: skip
    found = {f["name"]: f for f in json.loads(empty.stdout)["features"]}
    assert found["sam"] == {
        "name": "sam",
        "service": "segmentation",
        "available": False,
        "path": "",
        "detail": "no segmentation/sam/sam_vit_{b,l,h}*.pth (the segmentation service needs one)",
        "fix": "multipass models pull sam",
        "fallback": False,
        "status": "missing",
    }


def test_models_check_without_a_directory_says_how_to_give_one(tmp_path):
    result = subprocess.run(
        [*CLI, "check"], capture_output=True, text=True, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "MULTIPASS_STACK_DIR": str(tmp_path / "nothing")},
    )  # fmt: skip
    assert result.returncode == 2
    assert "pass --dir DIR or set MULTIPASS_MODEL_DIR" in result.stderr


def test_the_local_stacks_tiny_models_are_the_default_directory(tmp_path):
    (tmp_path / "stack" / "models" / "segmentation" / "sam").mkdir(parents=True)
    (tmp_path / "stack" / "models" / "segmentation" / "sam" / "sam_vit_b.pth").write_bytes(b"x")
    result = subprocess.run(
        [*CLI, "check", "--json"], capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin", "MULTIPASS_STACK_DIR": str(tmp_path / "stack")},
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert report["model_dir"] == str(tmp_path / "stack" / "models")
    assert {f["name"]: f["available"] for f in report["features"]}["sam"] is True


def test_the_table_the_services_log(tmp_path, caplog, manifest):
    import logging

    report = features.check(tmp_path, services=[features.SEGMENTATION], manifest=manifest)
    assert [f.name for f in report.features] == ["sam", "text_masks", "faces"]
    with caplog.at_level(logging.INFO):
        features.log_report(report, logging.getLogger("test-service"))
    records = {r.feature: r for r in caplog.records if hasattr(r, "feature")}
    assert records["sam"].levelno == logging.WARNING and records["sam"].fix == "multipass models pull sam"
    assert records["faces"].status == "fallback"
    assert caplog.records[-1].getMessage() == "model features: 1 of 3 available"
    assert caplog.records[-1].missing == ["sam", "text_masks"]
    messages = features.to_proto(report)
    assert [(m.name, m.available, m.fallback, m.fix) for m in messages] == [
        ("sam", False, False, "multipass models pull sam"),
        ("text_masks", False, False, "multipass models pull grounding"),
        ("faces", True, True, "multipass models pull faces"),
    ]


def test_the_catalog_needs_no_huggingface_hub(tmp_path):
    """Services import the check; only `multipass models pull` needs huggingface_hub (the `models` extra)."""
    probe = (
        "import sys; from multipass.model_catalog import features; "
        f"features.check({str(tmp_path)!r}); features.fix_command('sam'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('huggingface_hub', 'torch', 'httpx2')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_lora_files_that_cannot_be_named_lora_tags_are_each_named_with_what_to_do(tmp_path):
    """An A1111 ``models/Lora`` folder copied as it is: what is not read is said, never dropped silently."""
    loras = tmp_path / "diffusion" / "loras"
    (loras / "styles").mkdir(parents=True)
    for name in (
        "add_detail.safetensors",
        "more details.safetensors",
        "849330.safetensors",
        "styles/film.safetensors",
        "old.pt",
        "notes.txt",
        ".x.safetensors.part",
    ):
        (loras / name).write_bytes(b"placeholder")  # fmt: skip

    found = features.check(tmp_path).by_name()["named_loras"]

    assert found.available and found.path == "diffusion/loras/add_detail.safetensors"
    assert "<lora:add_detail:W>" in found.detail
    assert "diffusion/loras/more details.safetensors: a tag cannot spell its name" in found.detail
    assert "e.g. more_details.safetensors" in found.detail
    assert "diffusion/loras/849330.safetensors: an all-digit name reads as a tune id" in found.detail
    assert "diffusion/loras/styles/film.safetensors: subfolders are not read" in found.detail
    assert "diffusion/loras/old.pt: only .safetensors files are read" in found.detail
    assert "notes.txt" not in found.detail and ".part" not in found.detail

    (loras / "add_detail.safetensors").unlink()
    only_ignored = features.check(tmp_path).by_name()["named_loras"]
    assert not only_ignored.available and "more details.safetensors" in only_ignored.detail
