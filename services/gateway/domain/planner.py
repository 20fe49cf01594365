"""The planner: a parsed prompt and the job's inputs become a new job's record, one chain per image (pure).

Chain of image *k* (seed ``seed + k``), each pass only when asked for, one function per stage:

``prepare`` (gateway, done at submit) → ``mask`` (the --mask_prompt mask of the input image) →
``base`` (skipped in keep-background mode) → ``segment`` (one mask per person slot) → ``person-0`` ..
``person-N-1`` (sequential on the updated image; persons whose crops are disjoint become parallel stages
with a ``composite`` pass once the masks are known, :mod:`multipass_gateway.domain.person_stages`) →
``hires`` → ``faces`` → ``face_correct`` → ``face_swap`` → ``upscale`` → ``finish`` (film grain / colour
grading). ``--only_upscale`` reduces the chain to ``prepare`` → ``upscale`` (→ ``finish``).

Each diffusion pass gets its full :class:`PassSpec` here except the images produced earlier in the
chain (current image, masks, faces), which :func:`multipass_gateway.domain.job_state.build_request`
fills in at dispatch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from multipass.v1 import common_pb2, diffusion_pb2, events_pb2, jobs_pb2, prompt_pb2, segmentation_pb2
from multipass_gateway.domain import finishing_sizes
from multipass_gateway.domain.requirements import (
    CAPABILITY_POSE,
    can_estimate_pose,
    controlnet_declined,
    controlnet_off,
    has_finish,
)

#: Gateway-side kinds; every other kind runs on a diffusion worker.
SEGMENTATION_KINDS = frozenset({"mask", "segment"})
#: Kinds whose spec needs the faces found in the current image (``spec.faces``).
FACE_KINDS = frozenset({"faces", "face_correct", "face_swap"})
#: Kinds whose progress weight is the denoising steps they run (``PassState.steps_total`` from the start).
STEP_KINDS = frozenset({"base", "person", "hires", "faces"})
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

#: The worker's defaults when a spec leaves denoising_strength unset (diffusion.proto).
BASE_IMG2IMG_STRENGTH = 0.8
BASE_INPAINT_STRENGTH = 1.0
PERSON_STRENGTH = 0.5


def explicit_strength(parsed: prompt_pb2.ParsedPrompt) -> float | None:
    """The user's denoising_strength when they set one (0 included: no denoising), else None (each pass
    kind keeps its own default)."""
    return parsed.params.denoising_strength if "denoising_strength" in parsed.explicit_params else None


def _or_default(strength: float | None, default: float) -> float:
    return default if strength is None else strength


def _set_strength(spec: diffusion_pb2.PassSpec, strength: float | None) -> None:
    if strength is not None:
        spec.denoising_strength = strength


def wire_mask_blur(sigma: float) -> float:
    """A feather as ``PassSpec.mask_blur`` carries it: there 0 means the worker's default, so no feather is -1."""
    return sigma if sigma > 0 else -1.0


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
    #: (:func:`multipass_gateway.domain.person_stages.parallel_working_size`); 0 = always one after the other.
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


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size of an input image used as the scene: at most ``max_side`` per side, multiples of 8."""
    factor = min(1.0, max_side / max(width, height))
    return max(8, int(width * factor) // 8 * 8), max(8, int(height * factor) // 8 * 8)


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
    """Steps an img2img/inpaint pass really runs: ``steps × strength``, at least one (none at strength 0,
    where the pass returns its image unchanged).

    Such a pass starts from its input image noised to ``strength``, so only the last ``strength`` of the
    schedule is left to denoise (diffusers runs ``int(steps × strength)``). Counted as the worker counts
    them (its ``started`` event): the strength as the decimal sent, not its float32 neighbour.
    """
    strength = round(float(strength), 6)
    return max(1, int(steps * strength)) if strength > 0 else 0


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


# --- one image's chain, stage by stage -----------------------------------------------------------------


@dataclass
class _Chain:
    """The chain of one output image while it is planned: the passes so far and the current image size."""

    parsed: prompt_pb2.ParsedPrompt
    inputs: JobInputs
    config: PlannerConfig
    index: int
    seed: int
    width: int
    height: int
    passes: list[events_pb2.PlannedPass] = field(default_factory=list)

    @property
    def params(self) -> prompt_pb2.Params:
        return self.parsed.params

    @property
    def has_input(self) -> bool:
        return self.inputs.input_image is not None

    @property
    def pose_installed(self) -> bool:
        return CAPABILITY_POSE in self.config.capabilities

    def spec(
        self, kind: str, model: str, prompt: str, negative: str, loras: Sequence[prompt_pb2.LoraRef]
    ) -> diffusion_pb2.PassSpec:
        """A spec at the chain's current size with the job's sampling settings and the adapters' files."""
        params = self.params
        spec = diffusion_pb2.PassSpec(
            kind=kind,
            model=model,
            prompt=prompt,
            negative_prompt=negative,
            seed=self.seed,
            steps=params.steps,
            cfg_scale=params.cfg_scale,
            scheduler=params.scheduler,
            width=self.width,
            height=self.height,
            use_lpw=params.use_lpw,
        )
        spec.loras.extend(loras)
        for tune_id, ref in _tune_files(loras, self.inputs.tune_files).items():
            spec.tune_files[tune_id].CopyFrom(ref)
        # <faceid:ID:W> conditions the pass on the identity of the tune's reference images.
        faceid_tunes = [ref.tune_id for ref in loras if ref.kind == "faceid"]
        for key, ref in _reference_files(faceid_tunes, self.inputs.reference_images).items():
            spec.tune_files[key].CopyFrom(ref)
        return spec

    def base_spec(self, kind: str, loras: Sequence[prompt_pb2.LoraRef]) -> diffusion_pb2.PassSpec:
        """A spec on the base model with the base prompt."""
        parsed = self.parsed
        return self.spec(
            kind,
            self.config.base_model,
            parsed.base_effective_prompt,
            parsed.base_effective_negative_prompt,
            loras,
        )

    def add(self, planned: events_pb2.PlannedPass) -> None:
        self.passes.append(planned)


def _mask(chain: _Chain) -> None:
    parsed = chain.parsed
    if parsed.mask.prompt and chain.has_input and not parsed.keep_background:
        spec = diffusion_pb2.PassSpec(kind="mask", width=chain.width, height=chain.height)
        chain.add(_planned("mask", "mask", spec, FIXED_WEIGHTS["mask"]))


def _base(chain: _Chain) -> None:
    parsed, params, inputs = chain.parsed, chain.params, chain.inputs
    if parsed.keep_background:
        return
    spec = chain.base_spec("base", parsed.base_loras)
    steps = params.steps
    if chain.has_input:
        spec.image.CopyFrom(inputs.input_image)
        inpaint = inputs.mask_image is not None or bool(parsed.mask.prompt)
        strength = _or_default(
            explicit_strength(parsed), BASE_INPAINT_STRENGTH if inpaint else BASE_IMG2IMG_STRENGTH
        )
        _set_strength(spec, explicit_strength(parsed))
        steps = _denoise_steps(params.steps, strength)
        if params.controlnet and not controlnet_off(params):
            spec.controlnet = params.controlnet
            spec.controlnet_txt2img = params.controlnet_txt2img
            if params.HasField("controlnet_conditioning_scale"):
                spec.controlnet_conditioning_scale = params.controlnet_conditioning_scale
            elif params.controlnet == "pose":
                spec.controlnet_conditioning_scale = 1.0
            if params.controlnet_txt2img:
                steps = params.steps
            if params.controlnet == "pose":
                # Every person the layout of the input found: its keypoints when the layout has them,
                # else its box, in which the worker estimates one skeleton (without boxes it would see
                # the whole photo as one person).
                for slot in inputs.slots:
                    if slot.keypoints:
                        spec.skeletons.add().keypoints.extend(slot.keypoints)
                    else:
                        spec.person_boxes.add().CopyFrom(slot.box)
    elif (
        parsed.persons
        and chain.pose_installed
        and inputs.pose_image is not None
        and not controlnet_off(params)
        and not controlnet_declined(parsed)
    ):
        # Draw the persons where their slots are: the default layout's skeleton conditions the scene.
        spec.controlnet = "pose"
        spec.controlnet_txt2img = True
        spec.controlnet_conditioning_scale = (
            params.controlnet_conditioning_scale if params.HasField("controlnet_conditioning_scale") else 1.0
        )
        spec.control_image.CopyFrom(inputs.pose_image)
        for slot in inputs.slots:
            spec.skeletons.add().keypoints.extend(slot.keypoints)
    if params.prompt_expansion:
        spec.options[PROMPT_EXPANSION_OPTION] = "true"
    chain.add(_planned("base", "base", spec, steps))


def _persons(chain: _Chain) -> None:
    """The ``segment`` pass, then one pass per person (sequential until the masks are known)."""
    parsed, config = chain.parsed, chain.config
    if not parsed.persons:
        return
    spec = diffusion_pb2.PassSpec(kind="segment", width=chain.width, height=chain.height)
    chain.add(_planned("segment", "segment", spec, FIXED_WEIGHTS["segment"]))
    person_strength = _or_default(explicit_strength(parsed), PERSON_STRENGTH)
    for person in parsed.persons:
        spec = chain.spec(
            "person",
            config.person_model,
            person.effective_prompt,
            person.effective_negative_prompt,
            person.loras,
        )
        _set_strength(spec, explicit_strength(parsed))
        spec.crop_padding = config.crop_padding
        spec.crop_factor = config.crop_factor
        spec.mask_blur = wire_mask_blur(config.mask_blur)
        slot = next((s for s in chain.inputs.slots if s.index == person.index), None)
        if chain.pose_installed and slot is not None and slot.keypoints:
            # Keep the pose of the slot: its skeleton, moved into the person's crop by the worker.
            spec.controlnet = "pose"
            spec.controlnet_conditioning_scale = config.person_pose_scale
            spec.skeletons.add().keypoints.extend(slot.keypoints)
        elif chain.pose_installed and can_estimate_pose(config.capabilities):
            spec.controlnet = "pose"
            spec.controlnet_conditioning_scale = config.person_pose_scale
        planned = _planned(
            f"person-{person.index}",
            "person",
            spec,
            _denoise_steps(chain.params.steps, person_strength),
            person.index,
        )
        planned.parallel_working_size = config.parallel_working_size
        chain.add(planned)


def _hires(chain: _Chain) -> None:
    parsed, params, config = chain.parsed, chain.params, chain.config
    if not params.hires_fix:
        return
    spec = chain.base_spec("hires", parsed.base_loras)
    chain.width, chain.height = finishing_sizes.hires_size(chain.width, chain.height, config.hires_scale)
    spec.width, spec.height, spec.scale = chain.width, chain.height, config.hires_scale
    spec.denoising_strength = parsed.hires_denoising_strength
    if params.prompt_expansion:
        # Same prompt and seed as the base pass: the worker expands it the same way (greedy decoding).
        spec.options[PROMPT_EXPANSION_OPTION] = "true"
    steps = _denoise_steps(params.steps, parsed.hires_denoising_strength)
    chain.add(_planned("hires", "hires", spec, steps))


def _faces(chain: _Chain) -> None:
    parsed, config = chain.parsed, chain.config
    if not chain.params.inpaint_faces:
        return
    # Faces of no person get the base prompt, and the base LoRAs when they fit the person model.
    face_loras = parsed.base_loras if config.base_model == config.person_model else []
    spec = chain.spec(
        "faces",
        config.person_model,
        parsed.base_effective_prompt,
        parsed.base_effective_negative_prompt,
        face_loras,
    )
    spec.denoising_strength = config.faces_denoising_strength
    spec.crop_padding = config.crop_padding
    spec.mask_blur = wire_mask_blur(config.mask_blur)
    steps = _denoise_steps(chain.params.steps, config.faces_denoising_strength)
    chain.add(_planned("faces", "faces", spec, steps))


def _face_correct(chain: _Chain) -> None:
    if chain.params.face_correct:
        spec = chain.spec("face_correct", chain.config.base_model, "", "", [])
        chain.add(_planned("face_correct", "face_correct", spec, FIXED_WEIGHTS["face_correct"]))


def _face_swap(chain: _Chain) -> None:
    if not chain.params.face_swap:
        return
    # No adapters: each face's identity is the tune of its person (FaceTarget.loras, filled at dispatch),
    # read from that tune's reference images; a face of no person is left as it is. A prompt without
    # persons names its subject in the base tags.
    spec = chain.spec("face_swap", chain.config.person_model, "", "", [])
    tunes = [ref.tune_id for person in chain.parsed.persons for ref in person.loras]
    if not chain.parsed.persons:
        # One subject, named by the base tags: every face takes the identity of the first of their tunes
        # with reference images.
        with_references = [
            ref.tune_id for ref in chain.parsed.base_loras if chain.inputs.reference_images.get(ref.tune_id)
        ]
        tunes = with_references[:1]
        if tunes:
            spec.options["face_swap_tune"] = tunes[0]
    for key, ref in _reference_files(tunes, chain.inputs.reference_images).items():
        spec.tune_files[key].CopyFrom(ref)
    chain.add(_planned("face_swap", "face_swap", spec, FIXED_WEIGHTS["face_swap"]))


def _upscale(chain: _Chain) -> None:
    config = chain.config
    spec = chain.base_spec("upscale", [])
    chain.width, chain.height = finishing_sizes.upscaled_size(
        chain.width, chain.height, config.upscale_factor
    )
    spec.width, spec.height, spec.scale, spec.tiled = (
        chain.width,
        chain.height,
        config.upscale_factor,
        chain.parsed.flags.tiled_upscale,
    )
    chain.add(_planned("upscale", "upscale", spec, FIXED_WEIGHTS["upscale"]))


def _super_resolution(chain: _Chain) -> None:
    if chain.params.super_resolution:
        _upscale(chain)


def _finish(chain: _Chain) -> None:
    params = chain.params
    if not has_finish(params):
        return
    spec = chain.base_spec("finish", [])
    if params.film_grain:
        spec.options["film_grain"] = "true"
    if params.color_grading:
        spec.options["color_grading"] = params.color_grading
    chain.add(_planned("finish", "finish", spec, FIXED_WEIGHTS["finish"]))


#: The stages of a chain, in order (each adds its passes only when the prompt asks for them).
STAGES: tuple[Callable[[_Chain], None], ...] = (
    _mask,
    _base,
    _persons,
    _hires,
    _faces,
    _face_correct,
    _face_swap,
    _super_resolution,
    _finish,
)
#: The chain of ``--only_upscale``.
ONLY_UPSCALE_STAGES: tuple[Callable[[_Chain], None], ...] = (_upscale, _finish)


def plan_image(
    parsed: prompt_pb2.ParsedPrompt, inputs: JobInputs, config: PlannerConfig, index: int
) -> events_pb2.ImagePlan:
    """The chain of output image ``index``."""
    chain = _Chain(
        parsed=parsed,
        inputs=inputs,
        config=config,
        index=index,
        seed=image_seed(inputs.seed, index),
        width=inputs.width,
        height=inputs.height,
    )
    chain.add(_planned("prepare", "prepare", None, FIXED_WEIGHTS["prepare"]))
    for stage in ONLY_UPSCALE_STAGES if parsed.flags.only_upscale else STAGES:
        stage(chain)
    plan = events_pb2.ImagePlan(index=index)
    plan.passes.extend(chain.passes)
    return plan


def plan_job(
    parsed: prompt_pb2.ParsedPrompt, inputs: JobInputs, config: PlannerConfig
) -> list[events_pb2.ImagePlan]:
    """One chain per output image (``params.num_images`` of them)."""
    return [plan_image(parsed, inputs, config, index) for index in range(max(1, parsed.params.num_images))]


# --- the new job's record ---------------------------------------------------------------------------------


#: The parser's promise about controlnet=pose without an input image, which holds only when the base pass
#: is planned with the pose ControlNet (it is installed and the layout gave a pose image).
_POSE_LAYOUT_WARNING = (
    "controlnet=pose without an input image: the base pass is conditioned on the default layout"
)


def _as_planned(warnings: Sequence[str], plans: Sequence[events_pb2.ImagePlan]) -> list[str]:
    """The parser's warnings, with the one about the pose layout made true to the plan."""
    conditioned = any(p.kind == "base" and p.spec.controlnet == "pose" for plan in plans for p in plan.passes)
    return [
        "controlnet=pose without an input image: no pose ControlNet is installed (or the layout has no pose), "
        "so the base pass is not conditioned on the layout"
        if warning.startswith(_POSE_LAYOUT_WARNING) and not conditioned
        else warning
        for warning in warnings
    ]


def job_record(
    tenant: str,
    job_id: str,
    request: jobs_pb2.SubmitJobRequest,
    parsed: prompt_pb2.ParsedPrompt,
    inputs: JobInputs,
    config: PlannerConfig,
    *,
    created: datetime,
    warnings: Sequence[str] = (),
) -> events_pb2.JobRecord:
    """The record of a new job: its plans, the public Job with a state per image and pass, its persons.

    ``parsed`` is the job's own copy: its seed and size become the job's (``inputs``). ``warnings`` are
    added to the parser's. Prepare passes are done at submit (their output is the input image).
    """
    parsed.params.seed = inputs.seed
    parsed.params.w, parsed.params.h = inputs.width, inputs.height
    plans = plan_job(parsed, inputs, config)
    job = jobs_pb2.Job(
        job_id=job_id,
        state=jobs_pb2.JOB_STATE_QUEUED,
        prompt=request.prompt,
        parsed=parsed,
        callback_url=request.callback_url,
        idempotency_key=request.idempotency_key,
        warnings=[*_as_planned(parsed.warnings, plans), *warnings],
    )
    job.created_at.FromDatetime(created)
    for plan in plans:
        image = job.images.add(
            index=plan.index, seed=image_seed(inputs.seed, plan.index), status=jobs_pb2.PASS_STATUS_QUEUED
        )
        for planned in plan.passes:
            state = image.passes.add(
                name=planned.name, kind=planned.kind, status=jobs_pb2.PASS_STATUS_PENDING
            )
            if planned.kind in STEP_KINDS:
                state.steps_total = planned.weight
            if planned.kind == "prepare":
                state.started_at.FromDatetime(created)
                if inputs.input_image is not None:
                    state.output.CopyFrom(inputs.input_image)
    slots = list(inputs.slots)
    for person in parsed.persons:
        assignment = job.persons.add(
            index=person.index, prompt=person.effective_prompt, loras=list(person.loras)
        )
        if person.index < len(slots):
            assignment.slot_box.CopyFrom(slots[person.index].box)
    record = events_pb2.JobRecord(job=job, tenant=tenant, plans=plans, slots=slots)
    if inputs.input_image is not None:
        record.input_image.CopyFrom(inputs.input_image)
    if inputs.mask_image is not None:
        record.mask_image.CopyFrom(inputs.mask_image)
    if inputs.pose_image is not None:
        record.pose_image.CopyFrom(inputs.pose_image)
    return record
