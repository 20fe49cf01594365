"""A request that needs a component the workers lack is refused at submit naming the feature and the
``multipass models pull`` command that installs it (``domain/requirements.py``)."""

from __future__ import annotations

from multipass_gateway.domain import requirements


def family_sd15(capability: str) -> str:
    return "sd15"


def test_each_missing_component_names_its_feature_and_the_pull_that_installs_it():
    needs = [
        ("pass:hires", "params.hires_fix"),
        ("upscaler", "params.super_resolution"),
        ("face_restorer", "params.face_correct"),
        ("face_swapper", "params.face_swap"),
        ("controlnet:depth", "params.controlnet"),
        ("preprocessor:depth", "params.controlnet"),
        ("prompt_expander", "params.prompt_expansion"),
        ("upscaler", "params.super_resolution"),  # asked twice, reported once
    ]
    missing = requirements.missing_components(needs, {"pass:hires"}, family_sd15)
    assert [(m.capability, m.feature, m.fix) for m in missing] == [
        ("upscaler", "upscaler", "multipass models pull upscaler"),
        ("face_restorer", "face_restorer", "multipass models pull face-restorer"),
        ("face_swapper", "face_swap", "multipass models pull face-swap"),
        ("controlnet:depth", "controlnet:depth", "multipass models pull controlnet-sd15"),
        ("preprocessor:depth", "preprocessor:depth", "multipass models pull controlnet-sd15"),
        ("prompt_expander", "prompt_expander", "multipass models pull prompt-expander"),
    ]
    violation = missing[0].violation()
    assert (violation.field, violation.description) == (
        "params.super_resolution",
        "needs 'upscaler', which the diffusion workers do not have installed; "
        "install it with `multipass models pull upscaler`",
    )
    # One command installs everything the request lacks.
    assert requirements.pull_command(missing) == (
        "multipass models pull upscaler face-restorer face-swap controlnet-sd15 prompt-expander"
    )


def test_the_fix_fits_the_family_of_the_model_that_needs_it():
    families = {
        "faceid:xl": "sdxl",
        "faceid:base": "sd15",
        "controlnet:pose": "sdxl",
        "controlnet:tile": "sdxl",
    }
    missing = requirements.missing_components(
        [
            ("faceid:xl", "<faceid:a>"),
            ("faceid:base", "<faceid:a>"),
            ("controlnet:pose", "params.controlnet"),
            ("controlnet:tile", "params.controlnet"),
        ],
        set(),
        families.__getitem__,
    )
    assert [m.fix for m in missing] == [
        "multipass models pull faceid-sdxl",
        "multipass models pull faceid",
        "multipass models pull controlnet-sdxl",
        "",  # no SDXL tile ControlNet profile
    ]
    assert missing[3].violation().description == (
        "needs 'controlnet:tile', which the diffusion workers do not have installed "
        "(feature controlnet:tile; no `multipass models pull` profile provides it)"
    )


def test_what_no_model_file_provides_has_no_fix():
    missing = requirements.missing_components([("pass:upscale", "--only_upscale")], set(), family_sd15)
    assert [(m.feature, m.fix) for m in missing] == [(None, "")]
    assert missing[0].violation().description == (
        "needs 'pass:upscale', which the diffusion workers do not have installed"
    )
    assert requirements.pull_command(missing) == ""


def test_a_controlnet_no_worker_implements_is_said_to_be_unimplemented_not_uninstalled():
    # reference needs no file: a worker that lacks it is older than it.
    (missing,) = requirements.missing_components(
        [("controlnet:reference", "params.controlnet")], set(), family_sd15
    )
    violation = missing.violation()
    assert violation.field == "params.controlnet"
    assert violation.description.startswith(
        "controlnet=reference is not implemented by the diffusion workers"
    )
    assert (
        "pose, canny, depth, lineart, mlsd, hed, tile, qr, composition (once installed) and reference"
        in violation.description
    )
    assert "install" not in violation.description.replace("installed", "")


def test_composition_names_its_feature_and_the_pull_that_installs_it():
    (missing,) = requirements.missing_components(
        [("controlnet:composition", "params.controlnet")], set(), family_sd15
    )
    assert (missing.feature, missing.fix) == ("controlnet:composition", "multipass models pull composition")
    assert "multipass models pull composition" in missing.violation().description


def test_composition_is_asked_of_the_base_models_own_entry_where_workers_list_it():
    needs = [("controlnet:composition", "params.controlnet"), ("controlnet:canny", "params.controlnet")]
    # Installed for the SD1.5 model only: an SDXL base model is refused at submit, with the SDXL pull.
    installed = {"controlnet:composition", "controlnet:composition:sd15-a", "controlnet:canny"}
    asked = requirements.per_model(needs, installed, "sdxl-b")
    assert asked == [
        ("controlnet:composition:sdxl-b", "params.controlnet"),
        ("controlnet:canny", "params.controlnet"),
    ]
    (missing,) = requirements.missing_components(asked, installed, lambda capability: "sdxl")
    assert (missing.feature, missing.fix) == (
        "controlnet:composition",
        "multipass models pull composition-sdxl",
    )
    assert (
        requirements.missing_components(
            requirements.per_model(needs, installed, "sd15-a"), installed, family_sd15
        )
        == []
    )
    # Workers without it at all: the generic capability is named, as for any component.
    (absent,) = requirements.missing_components(
        requirements.per_model(needs[:1], set(), "sd15-a"), set(), family_sd15
    )
    assert absent.capability == "controlnet:composition"
