"""The planner: a parsed prompt plus the job's inputs become one chain of passes per output image (pure).

Chain of image *k* (seed ``seed + k``), each pass only when asked for:

``prepare`` (gateway, done at submit) → ``mask`` (the --mask_prompt mask of the input image) →
``base`` (skipped in keep-background mode) → ``segment`` (one mask per person slot) → ``person-0`` ..
``person-N-1`` (sequential on the updated image; persons whose crops are disjoint become parallel stages
with a ``composite`` pass once the masks are known, :mod:`multipass_gateway.person_stages`) → ``hires`` → ``faces`` → ``face_correct`` →
``face_swap`` → ``upscale`` → ``finish`` (film grain / colour grading).

``--only_upscale`` reduces the chain to ``prepare`` → ``upscale`` (→ ``finish``). Each diffusion pass
gets its full :class:`PassSpec` here except the images produced earlier in the chain (current image,
masks, faces), which :func:`multipass_gateway.job_state.build_request` fills in at dispatch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from multipass.v1 import common_pb2, diffusion_pb2, events_pb2, prompt_pb2, segmentation_pb2

#: Gateway-side kinds; every other kind runs on a diffusion worker.
SEGMENTATION_KINDS = frozenset({"mask", "segment"})
#: Kinds whose spec needs the faces found in the current image (``spec.faces``).
FACE_KINDS = frozenset({"faces", "face_correct", "face_swap"})
#: Fixed progress weights of passes without denoising steps.
FIXED_WEIGHTS = {
    "prepare": 1,
    "mask": 2,
    "segment": 2,
    "face_correct": 2,
    "face_swap": 3,
    "upscale": 5,
    "finish": 1,
}

#: ``PassSpec.options`` key asking the worker to expand the prompt before encoding (base and hires).
PROMPT_EXPANSION_OPTION = "prompt_expansion"

#: Installed component needed per option: (capability, field it is named after in errors).
CAPABILITY_UPSCALER = "upscaler"
CAPABILITY_FACE_RESTORER = "face_restorer"
CAPABILITY_FACE_SWAPPER = "face_swapper"
CAPABILITY_PROMPT_EXPANDER = "prompt_expander"
CAPABILITY_POSE = "controlnet:pose"
#: ControlNet kinds whose conditioning image is estimated from a picture by a model with weights
#: (the worker lists the installed ones as ``preprocessor:<kind>``); canny, mlsd, ... need none.
WEIGHTED_PREPROCESSORS = frozenset({"depth", "hed", "lineart", "pose"})


def is_capability_complete(capabilities: frozenset[str] | set[str]) -> bool:
    """Whether the workers list everything they run (``pass:<kind>``), so absent means missing."""
    return any(name.startswith("pass:") for name in capabilities)


def can_estimate_pose(capabilities: frozenset[str] | set[str]) -> bool:
    return "preprocessor:pose" in capabilities or not is_capability_complete(capabilities)


#: The worker's defaults when a spec leaves denoising_strength at 0 (diffusion.proto).
BASE_IMG2IMG_STRENGTH = 0.8
BASE_INPAINT_STRENGTH = 1.0
PERSON_STRENGTH = 0.5


def explicit_strength(parsed: prompt_pb2.ParsedPrompt) -> float:
    """The user's denoising_strength when they set one, else 0 (each pass kind keeps its own default)."""
    return parsed.params.denoising_strength if "denoising_strength" in parsed.explicit_params else 0.0


@dataclass(frozen=True)
class PlannerConfig:
    base_model: str
    person_model: str
    #: What the diffusion workers have installed (Diffusion.Info capabilities).
    capabilities: frozenset[str] = frozenset()
    hires_scale: float = 1.5
    upscale_factor: float = 4.0
    #: Context around a person's mask box, in pixels, and the crop factor around the box.
    crop_padding: int = 32
    crop_factor: float = 1.3
    #: Feather of the paste mask (Gaussian sigma, pixels).
    mask_blur: float = 4.0
    faces_denoising_strength: float = 0.4
    #: ControlNet strength keeping a person's pose during the person pass.
    person_pose_scale: float = 0.8
    #: The person model's working size when persons may run in parallel
    #: (:func:`multipass_gateway.person_stages.parallel_working_size`); 0 = always one after the other.
    parallel_working_size: int = 0


@dataclass(frozen=True)
class JobInputs:
    seed: int
    width: int
    height: int
    input_image: common_pb2.ImageRef | None = None
    mask_image: common_pb2.ImageRef | None = None
    pose_image: common_pb2.ImageRef | None = None
    slots: Sequence[segmentation_pb2.Slot] = ()
    #: Tune files by tune id, for every tune the prompt names.
    tune_files: Mapping[str, common_pb2.ObjectRef] = field(default_factory=dict)
    #: Reference face images by tune id (identities of face swap and of <faceid:...> tags).
    reference_images: Mapping[str, Sequence[common_pb2.ImageRef]] = field(default_factory=dict)


def reference_key(tune_id: str, index: int) -> str:
    """Key of a tune's ``index``-th reference image in ``PassSpec.tune_files`` (the worker's convention)."""
    return f"{tune_id}/reference-{index}"


def image_seed(seed: int, index: int) -> int:
    """Seed of output image ``index``: ``seed + index``, wrapped into 0..2^32-1."""
    return (seed + index) % 2**32


def round8(value: float) -> int:
    return max(8, int(round(value / 8.0)) * 8)


def scaled(width: int, height: int, factor: float) -> tuple[int, int]:
    return round8(width * factor), round8(height * factor)


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size of an input image used as the scene: at most ``max_side`` per side, multiples of 8."""
    factor = min(1.0, max_side / max(width, height))
    return max(8, int(width * factor) // 8 * 8), max(8, int(height * factor) // 8 * 8)


def has_finish(params: prompt_pb2.Params) -> bool:
    return params.film_grain or bool(params.color_grading)


def required_capabilities(
    parsed: prompt_pb2.ParsedPrompt, *, has_input_image: bool, complete: bool = False
) -> list[tuple[str, str]]:
    """(capability, field) for every installed component the request needs; checked at submit.

    ``complete``: the workers list their pass kinds and preprocessors too (see :func:`diffusion_kinds`).
    """
    params = parsed.params
    needs: list[tuple[str, str]] = []
    if complete:
        needs += [(f"pass:{kind}", field) for kind, field in diffusion_kinds(parsed)]
    if params.controlnet and (has_input_image or params.controlnet_txt2img):
        needs.append((f"controlnet:{params.controlnet}", "params.controlnet"))
        if complete and has_input_image and params.controlnet in WEIGHTED_PREPROCESSORS:
            needs.append((f"preprocessor:{params.controlnet}", "params.controlnet"))
    if params.super_resolution or parsed.flags.only_upscale:
        needs.append(
            (CAPABILITY_UPSCALER, "params.super_resolution" if params.super_resolution else "--only_upscale")
        )
    if params.face_correct:
        needs.append((CAPABILITY_FACE_RESTORER, "params.face_correct"))
    if params.face_swap:
        needs.append((CAPABILITY_FACE_SWAPPER, "params.face_swap"))
    if params.prompt_expansion:
        needs.append((CAPABILITY_PROMPT_EXPANDER, "params.prompt_expansion"))
    return needs


def diffusion_kinds(parsed: prompt_pb2.ParsedPrompt) -> list[tuple[str, str]]:
    """(pass kind, field that asked for it) of every diffusion pass the chain will hold."""
    params = parsed.params
    if parsed.flags.only_upscale:
        kinds = [("upscale", "--only_upscale")]
    else:
        kinds = [] if parsed.keep_background else [("base", "prompt")]
        if parsed.persons:
            kinds.append(("person", "prompt"))
        optional = [
            ("hires", "params.hires_fix", params.hires_fix),
            ("faces", "params.inpaint_faces", params.inpaint_faces),
            ("face_correct", "params.face_correct", params.face_correct),
            ("face_swap", "params.face_swap", params.face_swap),
            ("upscale", "params.super_resolution", params.super_resolution),
        ]
        kinds += [(kind, field) for kind, field, wanted in optional if wanted]
    if has_finish(params):
        kinds.append(("finish", "params.color_grading" if params.color_grading else "params.film_grain"))
    return kinds


def families(model_family: str) -> frozenset[str]:
    """The families a Diffusion.Info answer names (``"sd15"``, or ``"sd15,sdxl"`` for a mixed worker)."""
    return frozenset(part.strip() for part in model_family.split(",") if part.strip())


def model_family(info: diffusion_pb2.InfoResponse, model: str) -> str:
    """The family of ``model`` from Diffusion.Info: its ``model_families`` entry; "" when unknown.

    A worker without the per-model map (an older one) is read from ``model_family`` when that names a
    single family; a mixed answer leaves the family unknown (the worker checks it when the pass runs).
    """
    if model in info.model_families:
        return info.model_families[model]
    served = families(info.model_family)
    return next(iter(served)) if len(served) == 1 else ""


def tune_models(
    parsed: prompt_pb2.ParsedPrompt, base_model: str, person_model: str
) -> dict[tuple[str, str], list[str]]:
    """The models whose passes load each tune of the prompt, by (kind, tune id).

    Base tags (base and common) load on the base model (base and hires passes); person tags (person and
    common) on the person model (person passes and the faces pass). Face swap loads no adapter, and the
    faces pass gives the base tags to faces of no person only when both models are one.
    """
    base = {(ref.kind, ref.tune_id) for ref in parsed.base_loras}
    person = {(ref.kind, ref.tune_id) for p in parsed.persons for ref in p.loras}
    models: dict[tuple[str, str], list[str]] = {}
    for ref in tune_ids(parsed):
        key = (ref.kind, ref.tune_id)
        used = ([base_model] if key in base else []) + ([person_model] if key in person else [])
        models[key] = list(dict.fromkeys(used))
    return models


def tune_ids(parsed: prompt_pb2.ParsedPrompt) -> list[prompt_pb2.LoraRef]:
    """Every model tag of the prompt (base, common and persons), first occurrence of each tag."""
    seen: set[tuple[str, str]] = set()
    refs: list[prompt_pb2.LoraRef] = []
    for ref in [*parsed.base_loras, *parsed.common_loras, *(r for p in parsed.persons for r in p.loras)]:
        key = (ref.kind, ref.tune_id)
        if key not in seen:
            seen.add(key)
            refs.append(ref)
    return refs


def _tune_files(
    loras: Sequence[prompt_pb2.LoraRef], files: Mapping[str, common_pb2.ObjectRef]
) -> dict[str, common_pb2.ObjectRef]:
    return {ref.tune_id: files[ref.tune_id] for ref in loras if ref.tune_id in files}


def _reference_files(
    tune_ids: Sequence[str], images: Mapping[str, Sequence[common_pb2.ImageRef]]
) -> dict[str, common_pb2.ObjectRef]:
    """``<tune_id>/reference-<k>`` entries of ``spec.tune_files`` for the reference images of ``tune_ids``."""
    return {
        reference_key(tune_id, number): common_pb2.ObjectRef(
            bucket=image.bucket, key=image.key, sha256=image.sha256, size=image.size
        )
        for tune_id in dict.fromkeys(tune_ids)
        for number, image in enumerate(images.get(tune_id, ()))
    }


def _denoise_steps(steps: int, strength: float) -> int:
    """Steps an img2img/inpaint pass really runs (diffusers runs ``int(steps * strength)``)."""
    return max(1, int(steps * strength)) if strength > 0 else steps


def _planned(
    name: str, kind: str, spec: diffusion_pb2.PassSpec | None, weight: int, person_index: int = -1
) -> events_pb2.PlannedPass:
    if kind == "prepare":
        runs_in = "gateway"
    elif kind in SEGMENTATION_KINDS:
        runs_in = "segmentation"
    else:
        runs_in = "diffusion"
    planned = events_pb2.PlannedPass(
        name=name,
        kind=kind,
        runs_in=runs_in,
        person_index=person_index,
        weight=max(1, weight),
        needs_faces=kind in FACE_KINDS,
    )
    if spec is not None:
        planned.spec.CopyFrom(spec)
    return planned


def plan_image(
    parsed: prompt_pb2.ParsedPrompt, inputs: JobInputs, config: PlannerConfig, index: int
) -> events_pb2.ImagePlan:
    """The chain of output image ``index``."""
    params = parsed.params
    seed = image_seed(inputs.seed, index)
    width, height = inputs.width, inputs.height
    has_input = inputs.input_image is not None
    pose_installed = CAPABILITY_POSE in config.capabilities
    passes = [_planned("prepare", "prepare", None, FIXED_WEIGHTS["prepare"])]

    def common(
        kind: str, model: str, prompt: str, negative: str, loras: Sequence[prompt_pb2.LoraRef]
    ) -> diffusion_pb2.PassSpec:
        spec = diffusion_pb2.PassSpec(
            kind=kind,
            model=model,
            prompt=prompt,
            negative_prompt=negative,
            seed=seed,
            steps=params.steps,
            cfg_scale=params.cfg_scale,
            scheduler=params.scheduler,
            width=width,
            height=height,
            use_lpw=params.use_lpw,
        )
        spec.loras.extend(loras)
        for tune_id, ref in _tune_files(loras, inputs.tune_files).items():
            spec.tune_files[tune_id].CopyFrom(ref)
        # <faceid:ID:W> conditions the pass on the identity of the tune's reference images.
        faceid_tunes = [ref.tune_id for ref in loras if ref.kind == "faceid"]
        for key, ref in _reference_files(faceid_tunes, inputs.reference_images).items():
            spec.tune_files[key].CopyFrom(ref)
        return spec

    base_prompt, base_negative = parsed.base_effective_prompt, parsed.base_effective_negative_prompt

    if parsed.flags.only_upscale:
        spec = common("upscale", config.base_model, base_prompt, base_negative, [])
        width, height = scaled(width, height, config.upscale_factor)
        spec.width, spec.height, spec.scale, spec.tiled = (
            width,
            height,
            config.upscale_factor,
            parsed.flags.tiled_upscale,
        )
        passes.append(_planned("upscale", "upscale", spec, FIXED_WEIGHTS["upscale"]))
        return _finish(parsed, passes, common, config, base_prompt, base_negative, index, width, height)

    if parsed.mask.prompt and has_input and not parsed.keep_background:
        passes.append(
            _planned(
                "mask",
                "mask",
                diffusion_pb2.PassSpec(kind="mask", width=width, height=height),
                FIXED_WEIGHTS["mask"],
            )
        )

    if not parsed.keep_background:
        spec = common("base", config.base_model, base_prompt, base_negative, parsed.base_loras)
        steps = params.steps
        if has_input:
            spec.image.CopyFrom(inputs.input_image)
            inpaint = inputs.mask_image is not None or bool(parsed.mask.prompt)
            strength = explicit_strength(parsed) or (
                BASE_INPAINT_STRENGTH if inpaint else BASE_IMG2IMG_STRENGTH
            )
            spec.denoising_strength = explicit_strength(parsed)
            steps = _denoise_steps(params.steps, strength)
            if params.controlnet:
                spec.controlnet = params.controlnet
                spec.controlnet_txt2img = params.controlnet_txt2img
                if params.HasField("controlnet_conditioning_scale"):
                    spec.controlnet_conditioning_scale = params.controlnet_conditioning_scale
                elif params.controlnet == "pose":
                    spec.controlnet_conditioning_scale = 1.0
                if params.controlnet_txt2img:
                    steps = params.steps
        elif parsed.persons and pose_installed and inputs.pose_image is not None:
            # Draw the persons where their slots are: the default layout's skeleton conditions the scene.
            spec.controlnet = "pose"
            spec.controlnet_txt2img = True
            spec.controlnet_conditioning_scale = (
                params.controlnet_conditioning_scale
                if params.HasField("controlnet_conditioning_scale")
                else 1.0
            )
            spec.control_image.CopyFrom(inputs.pose_image)
            for slot in inputs.slots:
                spec.skeletons.add().keypoints.extend(slot.keypoints)
        if params.prompt_expansion:
            spec.options[PROMPT_EXPANSION_OPTION] = "true"
        passes.append(_planned("base", "base", spec, steps))

    if parsed.persons:
        passes.append(
            _planned(
                "segment",
                "segment",
                diffusion_pb2.PassSpec(kind="segment", width=width, height=height),
                FIXED_WEIGHTS["segment"],
            )
        )
        person_strength = explicit_strength(parsed) or PERSON_STRENGTH
        for person in parsed.persons:
            spec = common(
                "person",
                config.person_model,
                person.effective_prompt,
                person.effective_negative_prompt,
                person.loras,
            )
            spec.denoising_strength = explicit_strength(parsed)
            spec.crop_padding = config.crop_padding
            spec.crop_factor = config.crop_factor
            spec.mask_blur = config.mask_blur
            slot = next((s for s in inputs.slots if s.index == person.index), None)
            if pose_installed and slot is not None and slot.keypoints:
                # Keep the pose of the slot: its skeleton, moved into the person's crop by the worker.
                spec.controlnet = "pose"
                spec.controlnet_conditioning_scale = config.person_pose_scale
                spec.skeletons.add().keypoints.extend(slot.keypoints)
            elif pose_installed and can_estimate_pose(config.capabilities):
                spec.controlnet = "pose"
                spec.controlnet_conditioning_scale = config.person_pose_scale
            planned = _planned(
                f"person-{person.index}",
                "person",
                spec,
                _denoise_steps(params.steps, person_strength),
                person.index,
            )
            planned.parallel_working_size = config.parallel_working_size
            passes.append(planned)

    if params.hires_fix:
        spec = common("hires", config.base_model, base_prompt, base_negative, parsed.base_loras)
        width, height = scaled(width, height, config.hires_scale)
        spec.width, spec.height, spec.scale = width, height, config.hires_scale
        spec.denoising_strength = parsed.hires_denoising_strength
        if params.prompt_expansion:
            # Same prompt and seed as the base pass: the worker expands it the same way (greedy decoding).
            spec.options[PROMPT_EXPANSION_OPTION] = "true"
        passes.append(
            _planned("hires", "hires", spec, _denoise_steps(params.steps, parsed.hires_denoising_strength))
        )

    if params.inpaint_faces:
        # Faces of no person get the base prompt, and the base LoRAs when they fit the person model.
        face_loras = parsed.base_loras if config.base_model == config.person_model else []
        spec = common("faces", config.person_model, base_prompt, base_negative, face_loras)
        spec.denoising_strength = config.faces_denoising_strength
        spec.crop_padding = config.crop_padding
        spec.mask_blur = config.mask_blur
        passes.append(
            _planned("faces", "faces", spec, _denoise_steps(params.steps, config.faces_denoising_strength))
        )

    if params.face_correct:
        spec = common("face_correct", config.base_model, "", "", [])
        passes.append(_planned("face_correct", "face_correct", spec, FIXED_WEIGHTS["face_correct"]))

    if params.face_swap:
        # No adapters: each face's identity is the tune of its person (FaceTarget.loras, filled at dispatch),
        # read from that tune's reference images; a face of no person is left as it is.
        spec = common("face_swap", config.person_model, "", "", [])
        tunes = [ref.tune_id for person in parsed.persons for ref in person.loras]
        for key, ref in _reference_files(tunes, inputs.reference_images).items():
            spec.tune_files[key].CopyFrom(ref)
        passes.append(_planned("face_swap", "face_swap", spec, FIXED_WEIGHTS["face_swap"]))

    if params.super_resolution:
        spec = common("upscale", config.base_model, base_prompt, base_negative, [])
        width, height = scaled(width, height, config.upscale_factor)
        spec.width, spec.height, spec.scale, spec.tiled = (
            width,
            height,
            config.upscale_factor,
            parsed.flags.tiled_upscale,
        )
        passes.append(_planned("upscale", "upscale", spec, FIXED_WEIGHTS["upscale"]))

    return _finish(parsed, passes, common, config, base_prompt, base_negative, index, width, height)


def _finish(parsed, passes, common, config, prompt, negative, index, width, height) -> events_pb2.ImagePlan:
    params = parsed.params
    if has_finish(params):
        spec = common("finish", config.base_model, prompt, negative, [])
        spec.width, spec.height = width, height
        if params.film_grain:
            spec.options["film_grain"] = "true"
        if params.color_grading:
            spec.options["color_grading"] = params.color_grading
        passes.append(_planned("finish", "finish", spec, FIXED_WEIGHTS["finish"]))
    plan = events_pb2.ImagePlan(index=index)
    plan.passes.extend(passes)
    return plan


def plan_job(
    parsed: prompt_pb2.ParsedPrompt, inputs: JobInputs, config: PlannerConfig
) -> list[events_pb2.ImagePlan]:
    """One chain per output image (``params.num_images`` of them)."""
    return [plan_image(parsed, inputs, config, index) for index in range(max(1, parsed.params.num_images))]
