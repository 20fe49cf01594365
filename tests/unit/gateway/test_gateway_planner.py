"""The planner: which passes each image's chain holds, in which order, with which specs."""

from __future__ import annotations

import pytest
from gateway_helpers import T0, config, image_ref, parsed_prompt, slots

from multipass.v1 import jobs_pb2
from multipass_gateway.domain import planner, requirements


def names(plan) -> list[str]:
    return [p.name for p in plan.passes]


def plan_of(parsed, **inputs):
    values = {
        "seed": 100,
        "width": parsed.params.w,
        "height": parsed.params.h,
        "slots": slots(len(parsed.persons)),
    }
    values.update(inputs)
    cfg = values.pop("cfg", None) or config()
    return planner.plan_job(parsed, planner.JobInputs(**values), cfg)


def test_zero_persons_is_a_single_base_pass():
    (plan,) = plan_of(parsed_prompt(0))
    assert names(plan) == ["prepare", "base"]
    base = plan.passes[1]
    assert base.runs_in == "diffusion"
    assert base.spec.kind == "base" and base.spec.model == "tiny-sd15"
    assert base.spec.prompt == "a garden, spring"
    assert base.spec.negative_prompt == "blurry"
    assert (base.spec.width, base.spec.height, base.spec.steps, base.spec.seed) == (512, 512, 30, 100)
    assert not base.spec.controlnet
    assert base.weight == 30


def test_one_person_chain_and_person_spec():
    parsed = parsed_prompt(1, person_loras={0: ["123"]})
    files = {
        "123": planner.common_pb2.ObjectRef(
            bucket="multipass-tunes", key="tunes/t/123/lora.safetensors", sha256="a" * 64
        )
    }
    (plan,) = plan_of(parsed, tune_files=files)
    assert names(plan) == ["prepare", "base", "segment", "person-0"]
    segment, person = plan.passes[2], plan.passes[3]
    assert segment.runs_in == "segmentation"
    assert person.person_index == 0 and person.runs_in == "diffusion"
    assert person.spec.prompt == "spring, ohwx person 0"
    assert person.spec.negative_prompt == "ugly 0"
    assert [ref.tune_id for ref in person.spec.loras] == ["123"]
    assert person.spec.tune_files["123"].key == "tunes/t/123/lora.safetensors"
    assert person.spec.controlnet == "pose"  # pose kept when the ControlNet is installed
    assert [k.x for k in person.spec.skeletons[0].keypoints] == [256.0]  # the slot's own skeleton
    assert person.spec.crop_padding == 32 and person.spec.mask_blur == 4.0
    # No explicit denoising_strength: the worker's person default, and the weight follows it.
    assert person.spec.denoising_strength == 0.0
    assert person.weight == int(30 * planner.PERSON_STRENGTH)
    # The base pass carries no person LoRA.
    assert not plan.passes[1].spec.loras


@pytest.mark.parametrize(
    ("steps", "strength", "expected"),
    [(30, 0.0, 15), (30, 0.4, 12), (10, 0.7, 7), (4, 0.75, 3), (2, 0.3, 1), (7, 0.9, 6), (50, 0.55, 27)],
)
def test_passes_from_an_image_plan_the_steps_the_worker_runs_and_reports(steps, strength, expected):
    """``steps × strength``: the job's steps_total, the progress weight and the worker's ``started``
    count agree, including strengths whose float32 falls just under the decimal (0.7, 0.9, 0.55)."""
    from PIL import Image

    from multipass_diffusion.passes.context import PassInputs
    from multipass_diffusion.passes.registry import HANDLERS

    explicit = ("denoising_strength",) if strength else ()
    parsed = parsed_prompt(1, steps=steps, denoising_strength=strength or 0.8, explicit=explicit)
    inputs = planner.JobInputs(
        seed=1, width=512, height=512, slots=slots(1), input_image=image_ref("jobs/t/j/inputs/input.png")
    )
    record = planner.job_record("t", "j", jobs_pb2.SubmitJobRequest(), parsed, inputs, config(), created=T0)
    plan, image = record.plans[0], record.job.images[0]
    assert [p.name for p in plan.passes] == ["prepare", "base", "segment", "person-0"]
    person, person_state = plan.passes[3], image.passes[3]
    worker_person = HANDLERS["person"].steps_to_run(person.spec, PassInputs())
    assert person.weight == person_state.steps_total == worker_person == expected
    base, base_state = plan.passes[1], image.passes[1]
    worker_base = HANDLERS["base"].steps_to_run(base.spec, PassInputs(image=Image.new("RGB", (8, 8))))
    assert base.weight == base_state.steps_total == worker_base
    assert worker_base == (expected if strength else int(steps * planner.BASE_IMG2IMG_STRENGTH))


def test_only_denoising_passes_have_steps_from_the_start():
    parsed = parsed_prompt(0, super_resolution=True, film_grain=True)
    inputs = planner.JobInputs(seed=1, width=512, height=512)
    record = planner.job_record("t", "j", jobs_pb2.SubmitJobRequest(), parsed, inputs, config(), created=T0)
    steps = {state.name: state.steps_total for state in record.job.images[0].passes}
    assert steps == {"prepare": 0, "base": 30, "upscale": 0, "finish": 0}


def test_two_persons_run_sequentially_in_slot_order():
    (plan,) = plan_of(parsed_prompt(2, person_loras={0: ["1"], 1: ["2"]}))
    assert names(plan) == ["prepare", "base", "segment", "person-0", "person-1"]
    assert [p.spec.loras[0].tune_id for p in plan.passes[3:]] == ["1", "2"]


def test_eight_persons_and_eight_images_with_consecutive_seeds():
    parsed = parsed_prompt(8, num_images=8)
    plans = plan_of(parsed)
    assert len(plans) == 8
    assert [p.index for p in plans] == list(range(8))
    for index, plan in enumerate(plans):
        assert names(plan) == ["prepare", "base", "segment"] + [f"person-{i}" for i in range(8)]
        assert {p.spec.seed for p in plan.passes if p.runs_in == "diffusion"} == {100 + index}


def test_seed_wraps_at_two_to_the_32():
    assert planner.image_seed(2**32 - 1, 1) == 0
    assert planner.image_seed(2**32 - 2, 3) == 1


def test_default_layout_pose_conditions_the_base_pass():
    parsed = parsed_prompt(2)
    pose = image_ref("jobs/t/j/inputs/pose.png")
    (plan,) = plan_of(parsed, pose_image=pose)
    base = plan.passes[1].spec
    assert base.controlnet == "pose" and base.controlnet_txt2img
    assert base.control_image.key == "jobs/t/j/inputs/pose.png"
    assert len(base.skeletons) == 2 and base.skeletons[1].keypoints[0].x == pytest.approx(384.0)


def test_an_explicit_controlnet_none_leaves_the_default_layout_pose_out():
    # controlnet=none once still planned the base pass with the layout's pose ControlNet.
    declined = parsed_prompt(2, controlnet="", explicit=("controlnet",))
    (plan,) = plan_of(declined, pose_image=image_ref("p.png"))
    base = plan.passes[1].spec
    assert not base.controlnet and not base.HasField("control_image") and not base.skeletons
    assert plan.passes[3].spec.controlnet == "pose"  # the person passes still keep their slot's pose


def test_without_pose_controlnet_no_conditioning_is_planned():
    parsed = parsed_prompt(2)
    (plan,) = plan_of(parsed, pose_image=image_ref("p.png"), cfg=config(capabilities=frozenset()))
    assert not plan.passes[1].spec.controlnet
    assert not plan.passes[3].spec.controlnet


@pytest.mark.parametrize("installed", [True, False])
def test_the_pose_layout_warning_says_what_was_planned(installed):
    promise = "controlnet=pose without an input image: the base pass is conditioned on the default layout of 2 standing figures"
    parsed = parsed_prompt(2, controlnet="pose")
    parsed.warnings.append(promise)
    inputs = planner.JobInputs(seed=1, width=512, height=512, slots=slots(2), pose_image=image_ref("p.png"))
    cfg = config() if installed else config(capabilities=frozenset())
    record = planner.job_record("t", "j", jobs_pb2.SubmitJobRequest(), parsed, inputs, cfg, created=T0)
    if installed:
        assert promise in record.job.warnings
    else:
        assert promise not in record.job.warnings
        assert any("no pose ControlNet is installed" in w for w in record.job.warnings)


def test_keep_background_skips_base_and_segments_the_input():
    parsed = parsed_prompt(2, base="", common="", keep_background=True)
    source = image_ref("jobs/t/j/inputs/input.png", 640, 480)
    (plan,) = plan_of(parsed, input_image=source, width=640, height=480)
    assert names(plan) == ["prepare", "segment", "person-0", "person-1"]
    assert (plan.passes[2].spec.width, plan.passes[2].spec.height) == (640, 480)


def test_img2img_base_uses_the_input_and_user_controlnet():
    parsed = parsed_prompt(
        0, controlnet="canny", denoising_strength=0.6, explicit=("denoising_strength", "controlnet")
    )
    source = image_ref("jobs/t/j/inputs/input.png")
    (plan,) = plan_of(parsed, input_image=source)
    base = plan.passes[1]
    assert base.spec.image.key == source.key
    assert base.spec.controlnet == "canny" and not base.spec.controlnet_txt2img
    assert base.spec.denoising_strength == pytest.approx(0.6)
    assert base.weight == int(30 * 0.6)


def test_pose_from_a_photo_of_several_people_gives_the_worker_each_persons_box():
    parsed = parsed_prompt(2, controlnet="pose", explicit=("controlnet",))
    detected = slots(2)
    for slot in detected:
        del slot.keypoints[:]  # the layout found the people's boxes, not their keypoints
    (plan,) = plan_of(parsed, input_image=image_ref("jobs/t/j/inputs/input.png"), slots=detected)
    base = plan.passes[1].spec
    assert base.controlnet == "pose" and not base.skeletons
    assert [(b.x0, b.x1) for b in base.person_boxes] == [(0, 256), (256, 512)]
    # Slots with keypoints are drawn as they are; no box is sent for them.
    (plan,) = plan_of(parsed, input_image=image_ref("jobs/t/j/inputs/input.png"))
    assert len(plan.passes[1].spec.skeletons) == 2 and not plan.passes[1].spec.person_boxes


def test_mask_prompt_adds_a_mask_pass_before_an_inpainting_base():
    parsed = parsed_prompt(1, mask_prompt="foreground")
    (plan,) = plan_of(parsed, input_image=image_ref("in.png"))
    assert names(plan) == ["prepare", "mask", "base", "segment", "person-0"]
    assert plan.passes[1].runs_in == "segmentation"
    # Inpainting strength defaults to the worker's; the progress weight uses it.
    assert plan.passes[2].weight == int(30 * planner.BASE_INPAINT_STRENGTH)


def test_mask_prompt_without_input_image_plans_no_mask_pass():
    (plan,) = plan_of(parsed_prompt(0, mask_prompt="person"))
    assert names(plan) == ["prepare", "base"]


def test_finishing_passes_in_order_with_sizes():
    parsed = parsed_prompt(
        1,
        hires_fix=True,
        inpaint_faces=True,
        face_correct=True,
        face_swap=True,
        super_resolution=True,
        film_grain=True,
        color_grading="Film Portra",
        tiled=True,
    )
    (plan,) = plan_of(parsed)
    assert names(plan) == [
        "prepare",
        "base",
        "segment",
        "person-0",
        "hires",
        "faces",
        "face_correct",
        "face_swap",
        "upscale",
        "finish",
    ]
    by_name = {p.name: p for p in plan.passes}
    assert (by_name["hires"].spec.width, by_name["hires"].spec.height) == (768, 768)
    assert by_name["hires"].spec.denoising_strength == pytest.approx(0.4)
    assert (
        by_name["faces"].needs_faces
        and by_name["face_swap"].needs_faces
        and by_name["face_correct"].needs_faces
    )
    assert not by_name["hires"].needs_faces and not by_name["upscale"].needs_faces
    assert (by_name["upscale"].spec.width, by_name["upscale"].spec.scale) == (3072, 4.0)
    assert by_name["upscale"].spec.tiled
    assert dict(by_name["finish"].spec.options) == {"film_grain": "true", "color_grading": "Film Portra"}
    assert by_name["finish"].spec.width == 3072


@pytest.mark.parametrize("use_lpw", [True, False])
def test_weighted_prompts_reach_every_pass_that_encodes_a_prompt(use_lpw):
    (plan,) = plan_of(parsed_prompt(2, use_lpw=use_lpw, hires_fix=True, inpaint_faces=True))
    encoding = [p for p in plan.passes if p.kind in ("base", "person", "hires", "faces")]
    assert sorted({p.kind for p in encoding}) == ["base", "faces", "hires", "person"]
    assert all(p.spec.use_lpw is use_lpw for p in encoding), [(p.name, p.spec.use_lpw) for p in encoding]


def test_the_operators_crop_feather_and_strengths_reach_the_person_and_face_passes():
    tuned = config(
        crop_padding=48, crop_factor=1.6, mask_blur=0, faces_denoising_strength=0.25, person_pose_scale=0.5
    )
    (plan,) = plan_of(parsed_prompt(1, inpaint_faces=True), cfg=tuned)
    by_name = {p.name: p.spec for p in plan.passes}
    person, faces = by_name["person-0"], by_name["faces"]
    assert (person.crop_padding, round(person.crop_factor, 3)) == (48, 1.6)
    assert person.mask_blur == -1 and faces.mask_blur == -1  # no feather: 0 would mean the worker's default
    assert round(person.controlnet_conditioning_scale, 3) == 0.5
    assert round(faces.denoising_strength, 3) == 0.25 and faces.crop_padding == 48
    assert planner.wire_mask_blur(4.0) == 4.0


def test_only_requested_finishing_passes_are_planned():
    (plan,) = plan_of(parsed_prompt(0, super_resolution=True))
    assert names(plan) == ["prepare", "base", "upscale"]
    (plan,) = plan_of(parsed_prompt(0, color_grading="Ektar"))
    assert names(plan) == ["prepare", "base", "finish"]


def test_only_upscale_plans_just_the_upscale():
    parsed = parsed_prompt(2, only_upscale=True)
    (plan,) = plan_of(parsed, input_image=image_ref("in.png"))
    assert names(plan) == ["prepare", "upscale"]


def test_required_capabilities_name_their_fields():
    parsed = parsed_prompt(
        0, controlnet="depth", super_resolution=True, face_correct=True, face_swap=True, prompt_expansion=True
    )
    needs = dict(requirements.required_capabilities(parsed, has_input_image=True))
    assert needs == {
        "controlnet:depth": "params.controlnet",
        "upscaler": "params.super_resolution",
        "face_restorer": "params.face_correct",
        "face_swapper": "params.face_swap",
        "prompt_expander": "params.prompt_expansion",
    }
    assert requirements.required_capabilities(parsed_prompt(0), has_input_image=False) == []


def test_keep_background_needs_no_controlnet_since_it_has_no_base_pass():
    parsed = parsed_prompt(
        1, base="", common="", keep_background=True, controlnet="canny", super_resolution=True
    )
    assert requirements.required_capabilities(parsed, has_input_image=True) == [
        ("upscaler", "params.super_resolution")
    ]
    (plan,) = plan_of(parsed, input_image=image_ref("in.png"))
    assert "base" not in names(plan)


def test_only_upscale_needs_only_the_upscaler():
    # Options it ignores (controlnet, face_correct, ...) are not required to be installed.
    parsed = parsed_prompt(0, only_upscale=True, controlnet="depth", face_correct=True, prompt_expansion=True)
    assert requirements.required_capabilities(parsed, has_input_image=True) == [
        ("upscaler", "--only_upscale")
    ]
    assert requirements.required_capabilities(parsed, has_input_image=True, complete=True) == [
        ("pass:upscale", "--only_upscale"),
        ("upscaler", "--only_upscale"),
    ]


def test_tune_ids_lists_each_tag_once_in_order():
    parsed = parsed_prompt(2, base_loras=["9"], person_loras={0: ["1", "9"], 1: ["1"]})
    assert [ref.tune_id for ref in requirements.tune_ids(parsed)] == ["9", "1"]


def test_fit_size_keeps_multiples_of_eight_under_the_cap():
    assert planner.fit_size(4000, 3000, 2048) == (2048, 1536)
    assert planner.fit_size(517, 389, 2048) == (512, 384)


def test_face_swap_carries_the_persons_tunes_and_reference_images():
    parsed = parsed_prompt(2, face_swap=True, person_loras={0: ["7"], 1: ["8"]})
    files = {
        t: planner.common_pb2.ObjectRef(bucket="multipass-tunes", key=f"tunes/t/{t}/lora.safetensors")
        for t in ("7", "8")
    }
    references = {"7": [image_ref("uploads/t/a.png"), image_ref("uploads/t/b.png")]}
    (plan,) = plan_of(parsed, tune_files=files, reference_images=references)
    swap = plan.passes[-1].spec
    assert plan.passes[-1].name == "face_swap"
    # No adapter is loaded: identities come from the faces' tunes (filled at dispatch) and their references.
    assert not swap.loras
    assert sorted(swap.tune_files) == ["7/reference-0", "7/reference-1"]
    assert swap.tune_files["7/reference-1"].key == "uploads/t/b.png"
    assert swap.tune_files["7/reference-1"].sha256 == "0" * 64


def test_face_swap_of_a_prompt_without_persons_takes_the_base_tags_tune():
    # The single-subject prompt Astria's POST /tunes/:id/prompts makes: <lora:ID:1> ohwx woman ..., face_swap.
    parsed = parsed_prompt(0, face_swap=True, base_loras=["5", "6"])
    references = {"6": [image_ref("uploads/t/c.png")]}
    (plan,) = plan_of(parsed, reference_images=references)
    swap = plan.passes[-1].spec
    assert plan.passes[-1].name == "face_swap" and not swap.loras
    assert swap.options["face_swap_tune"] == "6"  # the first base tune with reference images
    assert sorted(swap.tune_files) == ["6/reference-0"]


def test_faceid_tags_carry_their_tunes_reference_images_to_their_passes():
    parsed = parsed_prompt(2, hires_fix=True, face_swap=True, person_loras={0: ["7"]})
    parsed.persons[0].loras.add(tune_id="9", weight=0.6, kind="faceid", tag="<faceid:9:0.6>")
    parsed.base_loras.add(tune_id="8", weight=1.0, kind="faceid", tag="<faceid:8:1>")
    references = {
        "7": [image_ref("uploads/t/a.png")],
        "8": [image_ref("uploads/t/b.png")],
        "9": [image_ref("uploads/t/c.png"), image_ref("uploads/t/d.png")],
    }
    (plan,) = plan_of(parsed, reference_images=references)
    specs = {p.name: p.spec for p in plan.passes}
    assert sorted(specs["base"].tune_files) == sorted(specs["hires"].tune_files) == ["8/reference-0"]
    assert specs["base"].tune_files["8/reference-0"].key == "uploads/t/b.png"
    assert [(r.kind, r.tune_id) for r in specs["person-0"].loras] == [("lora", "7"), ("faceid", "9")]
    assert sorted(specs["person-0"].tune_files) == ["9/reference-0", "9/reference-1"]
    assert specs["person-0"].tune_files["9/reference-1"].key == "uploads/t/d.png"
    assert not specs["person-1"].tune_files
    # Face swap: the reference images of every tune of the persons, as before.
    assert sorted(specs["face_swap"].tune_files) == ["7/reference-0", "9/reference-0", "9/reference-1"]


def test_faceid_tags_need_faceid_on_the_models_of_their_passes():
    from multipass_gateway.app.submission import faceid_capabilities

    parsed = parsed_prompt(1, person_loras={0: ["7"]})
    assert faceid_capabilities(parsed, "base-model", "person-model") == []
    parsed.persons[0].loras.add(tune_id="9", weight=0.6, kind="faceid", tag="<faceid:9:0.6>")
    parsed.base_loras.add(tune_id="8", weight=1.0, kind="faceid", tag="<faceid:8:1>")
    assert faceid_capabilities(parsed, "base-model", "person-model") == [
        ("faceid:base-model", "<faceid:8:1>"),
        ("faceid:person-model", "<faceid:9:0.6>"),
    ]


def test_prompt_expansion_is_asked_of_the_base_and_hires_passes():
    (plan,) = plan_of(parsed_prompt(1, prompt_expansion=True, hires_fix=True, inpaint_faces=True))
    options = {p.name: dict(p.spec.options) for p in plan.passes if p.spec.kind}
    assert options["base"] == options["hires"] == {"prompt_expansion": "true"}
    assert not options["person-0"] and not options["faces"]
    (plan,) = plan_of(parsed_prompt(0, hires_fix=True))
    assert all(not p.spec.options for p in plan.passes)


def test_faces_of_no_person_get_the_base_loras_only_on_the_base_model():
    parsed = parsed_prompt(1, inpaint_faces=True, base_loras=["5"], person_loras={0: ["6"]})
    (plan,) = plan_of(parsed)
    faces = next(p.spec for p in plan.passes if p.name == "faces")
    assert [ref.tune_id for ref in faces.loras] == ["5"]
    (plan,) = plan_of(parsed, cfg=config(base_model="tiny-sdxl"))
    faces = next(p.spec for p in plan.passes if p.name == "faces")
    base = next(p.spec for p in plan.passes if p.name == "base")
    assert faces.model == "tiny-sd15" and not faces.loras
    assert base.model == "tiny-sdxl" and [ref.tune_id for ref in base.loras] == ["5"]


def test_tune_models_names_every_model_that_loads_a_tune():
    parsed = parsed_prompt(2, base_loras=["1", "3"], person_loras={0: ["2", "3"], 1: ["2"]})
    assert requirements.tune_models(parsed, "xl", "sd") == {
        ("lora", "1"): ["xl"],
        ("lora", "3"): ["xl", "sd"],
        ("lora", "2"): ["sd"],
    }
    assert requirements.tune_models(parsed, "sd", "sd")[("lora", "3")] == ["sd"]


def test_model_family_reads_the_per_model_map():
    info = planner.diffusion_pb2.InfoResponse(
        models=["a", "b"], model_family="sd15,sdxl", model_families={"a": "sd15", "b": "sdxl"}
    )
    assert (requirements.model_family(info, "a"), requirements.model_family(info, "b")) == ("sd15", "sdxl")
    assert requirements.model_family(planner.diffusion_pb2.InfoResponse(model_family="sd15,sdxl"), "a") == ""
    assert requirements.model_family(planner.diffusion_pb2.InfoResponse(model_family="sdxl"), "a") == "sdxl"


def test_diffusion_kinds_follow_the_plan():
    parsed = parsed_prompt(2, hires_fix=True, face_correct=True, super_resolution=True, film_grain=True)
    kinds = dict(requirements.diffusion_kinds(parsed))
    assert list(kinds) == ["base", "person", "hires", "face_correct", "upscale", "finish"]
    assert kinds["hires"] == "params.hires_fix" and kinds["finish"] == "params.film_grain"
    (plan,) = plan_of(parsed)
    planned = {p.kind for p in plan.passes if p.runs_in == "diffusion"}
    assert planned == set(kinds)
    keep = parsed_prompt(1, base="", common="", keep_background=True)
    assert [k for k, _ in requirements.diffusion_kinds(keep)] == ["person"]
    assert [k for k, _ in requirements.diffusion_kinds(parsed_prompt(1, only_upscale=True))] == ["upscale"]


def test_families_of_an_info_answer():
    assert requirements.families("sd15") == {"sd15"}
    assert requirements.families("sd15,sdxl") == {"sd15", "sdxl"}
    assert requirements.families("") == frozenset()


def test_person_pose_without_keypoints_needs_a_pose_estimator():
    parsed = parsed_prompt(1)
    bare = [planner.segmentation_pb2.Slot(index=0, box=planner.common_pb2.Box(x0=0, y0=0, x1=512, y1=512))]
    complete = frozenset({"controlnet:pose", "pass:base", "pass:person"})
    (plan,) = plan_of(parsed, slots=bare, cfg=config(capabilities=complete))
    assert not plan.passes[-1].spec.controlnet  # the worker lists its preprocessors and has no pose one
    (plan,) = plan_of(parsed, slots=bare, cfg=config(capabilities=complete | {"preprocessor:pose"}))
    assert plan.passes[-1].spec.controlnet == "pose" and not plan.passes[-1].spec.skeletons


def test_complete_workers_must_list_pass_kinds_and_weighted_preprocessors():
    parsed = parsed_prompt(1, controlnet="depth", hires_fix=True)
    needs = requirements.required_capabilities(parsed, has_input_image=True, complete=True)
    assert needs == [
        ("pass:base", "prompt"),
        ("pass:person", "prompt"),
        ("pass:hires", "params.hires_fix"),
        ("controlnet:depth", "params.controlnet"),
        ("preprocessor:depth", "params.controlnet"),
    ]
    canny = parsed_prompt(0, controlnet="canny")
    assert ("preprocessor:canny", "params.controlnet") not in requirements.required_capabilities(
        canny, has_input_image=True, complete=True
    )


def test_a_new_job_record_holds_a_state_per_planned_pass_and_the_persons_slots():
    from datetime import UTC, datetime

    from multipass.v1 import jobs_pb2

    parsed = parsed_prompt(2, num_images=2, hires_fix=True, person_loras={1: ["7"]})
    parsed.warnings.append("from the parser")
    created = datetime(2030, 1, 2, tzinfo=UTC)
    inputs = planner.JobInputs(
        seed=41, width=640, height=384, input_image=image_ref("in.png", 640, 384), slots=slots(2, 640)
    )
    request = jobs_pb2.SubmitJobRequest(prompt="the prompt", callback_url="https://x.test/cb")
    record = planner.job_record(
        "t1", "job1", request, parsed, inputs, config(), created=created, warnings=["layout: tight"]
    )
    job = record.job
    assert (record.tenant, job.job_id, job.prompt, job.callback_url) == (
        "t1",
        "job1",
        "the prompt",
        request.callback_url,
    )
    assert (job.parsed.params.seed, job.parsed.params.w, job.parsed.params.h) == (41, 640, 384)
    assert list(job.warnings) == ["from the parser", "layout: tight"]
    assert job.created_at.ToDatetime(tzinfo=UTC) == created
    assert [image.seed for image in job.images] == [41, 42] and len(record.plans) == 2
    for image, plan in zip(job.images, record.plans, strict=True):
        assert [p.name for p in image.passes] == names(plan)
        assert all(p.status == jobs_pb2.PASS_STATUS_PENDING for p in image.passes)
        prepare, base = image.passes[0], image.passes[1]
        assert prepare.output.key == "in.png" and prepare.started_at.ToDatetime(tzinfo=UTC) == created
        assert base.steps_total == plan.passes[1].weight
    assert [p.slot_box for p in job.persons] == [s.box for s in record.slots]
    assert [ref.tune_id for ref in job.persons[1].loras] == ["7"]
    assert record.input_image.key == "in.png" and not record.HasField("mask_image")


def test_an_explicit_zero_conditioning_scale_runs_no_controlnet():
    # A spec's 0 means "the default scale" (1.0) to the worker: the ControlNet is left out instead.
    parsed = parsed_prompt(0, controlnet="depth", controlnet_conditioning_scale=0.0)
    (plan,) = plan_of(parsed, input_image=image_ref("jobs/t/j/inputs/input.png"))
    assert not plan.passes[1].spec.controlnet
    assert requirements.required_capabilities(parsed, has_input_image=True) == []
    (layout_plan,) = plan_of(
        parsed_prompt(2, controlnet_conditioning_scale=0.0), pose_image=image_ref("p.png")
    )
    assert not layout_plan.passes[1].spec.controlnet
    kept = parsed_prompt(0, controlnet="depth", controlnet_conditioning_scale=0.3)
    (plan,) = plan_of(kept, input_image=image_ref("jobs/t/j/inputs/input.png"))
    assert plan.passes[1].spec.controlnet == "depth"
    assert plan.passes[1].spec.controlnet_conditioning_scale == pytest.approx(0.3)


def test_pose_on_an_input_photo_draws_every_person_the_layout_found():
    parsed = parsed_prompt(2, controlnet="pose")
    (plan,) = plan_of(parsed, input_image=image_ref("jobs/t/j/inputs/input.png"))
    base = plan.passes[1].spec
    assert base.controlnet == "pose" and len(base.skeletons) == 2
    assert [s.keypoints[0].x for s in base.skeletons] == [pytest.approx(128.0), pytest.approx(384.0)]
    (single,) = plan_of(parsed_prompt(0, controlnet="pose"), input_image=image_ref("in.png"), slots=[])
    assert single.passes[1].spec.controlnet == "pose" and not single.passes[1].spec.skeletons  # estimated


def test_an_explicit_zero_strength_reaches_the_worker_and_plans_no_steps():
    """denoising_strength=0 is the user's value, not "default": the specs carry it (proto3 presence) and
    the passes from an image plan no denoising step; without it the specs leave it unset."""
    parsed = parsed_prompt(1, denoising_strength=0.0, explicit=("denoising_strength",))
    (plan,) = plan_of(parsed, input_image=image_ref("jobs/t/j/inputs/input.png"))
    by_name = {p.name: p for p in plan.passes}
    for name in ("base", "person-0"):
        assert by_name[name].spec.HasField("denoising_strength"), name
        assert by_name[name].spec.denoising_strength == 0.0
        assert by_name[name].weight == 1, name  # the least progress weight: no step to count
    (plan,) = plan_of(parsed_prompt(1), input_image=image_ref("jobs/t/j/inputs/input.png"))
    for spec in (p.spec for p in plan.passes if p.name in ("base", "person-0")):
        assert not spec.HasField("denoising_strength")


def test_a_zero_hires_strength_plans_an_upscale_without_steps():
    parsed = parsed_prompt(0, hires_fix=True)
    parsed.hires_denoising_strength = 0.0
    (plan,) = plan_of(parsed)
    hires = next(p for p in plan.passes if p.name == "hires")
    assert hires.spec.HasField("denoising_strength") and hires.spec.denoising_strength == 0.0
    assert hires.weight == 1  # the least progress weight: no step to count


@pytest.mark.parametrize(("w", "h", "hires_scale"), [(2048, 1024, 4.0), (2048, 2048, 2.5), (1536, 1024, 3.0)])
def test_finishing_sizes_past_the_workers_largest_side_are_planned_shrunk_as_the_worker_shrinks_them(
    w, h, hires_scale
):
    """A scene at the size cap with hires and super resolution: hires and upscale are planned at the size
    the worker makes (long side at most 4096, same aspect), so every pass's spec passes the worker's checks
    instead of failing mid-job, and the planned sizes are the output sizes."""
    from PIL import Image

    from multipass_diffusion.passes.context import PassInputs
    from multipass_diffusion.passes.hires import hires_size
    from multipass_diffusion.passes.registry import HANDLERS
    from multipass_diffusion.passes.upscale import target_size
    from multipass_diffusion.passes.validation import MAX_SIDE

    parsed = parsed_prompt(
        1, w=w, h=h, hires_fix=True, inpaint_faces=True, super_resolution=True, film_grain=True
    )
    (plan,) = plan_of(parsed, cfg=config(hires_scale=hires_scale))
    by_name = {p.name: p for p in plan.passes}
    hires, faces, upscale = by_name["hires"].spec, by_name["faces"].spec, by_name["upscale"].spec
    assert (hires.width, hires.height) == hires_size((w, h), hires_scale)
    assert max(hires.width, hires.height) == MAX_SIDE
    assert (faces.width, faces.height) == (hires.width, hires.height)
    assert (upscale.width, upscale.height) == target_size((hires.width, hires.height), upscale.scale)[0]
    assert (by_name["finish"].spec.width, by_name["finish"].spec.height) == (upscale.width, upscale.height)
    image = PassInputs(image=Image.new("RGB", (8, 8)))
    for name in ("base", "hires", "faces"):
        HANDLERS[by_name[name].spec.kind].validate(by_name[name].spec, image)
