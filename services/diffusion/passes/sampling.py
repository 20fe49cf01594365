"""Running one diffusers pipeline for a pass: scheduler, prompts, seed, ControlNet, FaceID, composition,
step callback."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

from PIL import Image

from multipass_diffusion import composition, faceid, reference_attention
from multipass_diffusion.device_tuning import vae_tiling_for
from multipass_diffusion.passes.context import PassContext
from multipass_diffusion.preprocessors import Point
from multipass_diffusion.prompts_lpw import LpwEncoder, strip_break, truncation_warning
from multipass_diffusion.schedulers import make_scheduler

DEFAULT_CONDITIONING_SCALE = 1.0


def resolve_size(ctx: PassContext, image: Image.Image | None) -> tuple[int, int]:
    """Output size: the spec's, else the input image's rounded down to multiples of 8, else the model's native size."""
    spec = ctx.spec
    if spec.width and spec.height:
        return spec.width, spec.height
    if image is not None:
        return max(8, image.width // 8 * 8), max(8, image.height // 8 * 8)
    native = ctx.components.native_size
    return spec.width or native, spec.height or native


def skeletons(ctx: PassContext) -> list[list[Point]]:
    spec = ctx.spec
    people = [[Point(k.index, k.x, k.y, k.confidence) for k in s.keypoints] for s in spec.skeletons]
    if spec.keypoints:
        people.append([Point(k.index, k.x, k.y, k.confidence) for k in spec.keypoints])
    return [p for p in people if p]


def scale_skeletons(
    people: list[list[Point]], *, offset: tuple[float, float], scale: tuple[float, float]
) -> list[list[Point]]:
    """Skeletons moved into a crop: subtract the crop's origin, then scale to the working size."""
    ox, oy = offset
    sx, sy = scale
    return [
        [Point(p.index, (p.x - ox) * sx, (p.y - oy) * sy, p.confidence) for p in person] for person in people
    ]


def generate(
    ctx: PassContext,
    task: str,
    *,
    size: tuple[int, int],
    image: Image.Image | None = None,
    mask: Image.Image | None = None,
    control_image: Image.Image | None = None,
    strength: float | None = None,
) -> Image.Image:
    """Run the ``task`` pipeline ("txt2img", "img2img", "inpaint"), with ControlNet when ``control_image`` is given."""
    (result,) = generate_batch(
        ctx,
        task,
        [ctx.spec.seed],
        size=size,
        image=image,
        mask=mask,
        control_image=control_image,
        strength=strength,
    )
    return result


#: Scheduler names whose noise is not drawn from the pipeline's generators (DPMSolverSDEScheduler seeds
#: one Brownian tree for the whole batch), so a batch of them would not repeat each seed's image.
UNBATCHABLE_SCHEDULERS = frozenset({"dpm++sde", "dpm++sde_karras"})
#: Tasks whose pipelines draw every batch member's noise from that member's generator. Inpainting
#: encodes the (shared) input image with the first generator only, which shifts the other members'
#: noise, so an inpaint batch runs member by member.
BATCHABLE_TASKS = frozenset({"txt2img", "img2img"})


def generate_batch(
    ctx: PassContext,
    task: str,
    seeds: Sequence[int],
    *,
    size: tuple[int, int],
    image: Image.Image | None = None,
    mask: Image.Image | None = None,
    control_image: Image.Image | None = None,
    strength: float | None = None,
) -> list[Image.Image]:
    """One image per seed, ``spec.seed`` replaced by each; as one pipeline call where the task allows.

    A batch passes one generator per seed (``generator=[...]``, ``num_images_per_prompt=len(seeds)``):
    the pipelines draw each image's initial noise (and img2img's encoding sample) from its own
    generator, so each image equals the one its seed gives alone, up to batched-matmul rounding. Where
    that does not hold (:data:`BATCHABLE_TASKS`, :data:`UNBATCHABLE_SCHEDULERS`) the seeds run one after
    the other with the same step monitor.
    """
    if len(seeds) > 1 and not batchable(ctx.spec.scheduler, task):
        return [
            _run_pipeline(ctx, task, [seed], size, image, mask, control_image, strength)[0] for seed in seeds
        ]
    return _run_pipeline(ctx, task, list(seeds), size, image, mask, control_image, strength)


def batchable(scheduler: str, task: str) -> bool:
    """Whether a pass with this scheduler and pipeline task runs several seeds in one call."""
    return scheduler not in UNBATCHABLE_SCHEDULERS and task in BATCHABLE_TASKS


def _run_pipeline(
    ctx: PassContext,
    task: str,
    seeds: list[int],
    size: tuple[int, int],
    image: Image.Image | None,
    mask: Image.Image | None,
    control_image: Image.Image | None,
    strength: float | None,
) -> list[Image.Image]:
    import torch

    spec = ctx.spec
    width, height = size
    # Reference-only control needs no ControlNet model: it works through the UNet's own self-attention.
    reference = control_image if spec.controlnet == reference_attention.KIND else None
    # The composition adapter takes the picture itself as an image prompt, through IP-Adapter layers.
    layout = control_image if spec.controlnet == composition.KIND else None
    if reference is not None or layout is not None:
        control_image = None
    controlnet = ctx.runtime.controlnet(spec.controlnet) if control_image is not None else None
    pipe = ctx.components.pipeline(task, controlnet)
    pipe.scheduler = make_scheduler(spec.scheduler, ctx.components.scheduler_config, seed=seeds[0])
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    kwargs: dict = {
        "num_inference_steps": spec.steps,
        "guidance_scale": proto_float(spec.cfg_scale),
        # One image: a bare generator, exactly as before batching existed (outputs and cache entries stay).
        "generator": generators if len(generators) > 1 else generators[0],
        "output_type": "pil",
        "callback_on_step_end": ctx.monitor.callback,
    }
    if len(generators) > 1:
        kwargs["num_images_per_prompt"] = len(generators)
    kwargs.update(_prompt_kwargs(ctx))
    if ctx.faceid is not None:
        kwargs.update(faceid.pipeline_kwargs(ctx.faceid, pipe, kwargs["guidance_scale"]))
    strength = proto_float(strength) if strength is not None else None
    if task != "txt2img" and strength:
        kwargs["num_inference_steps"] = steps_for_strength(spec.steps, strength)
    if task == "txt2img":
        kwargs.update(width=width, height=height)
        if control_image is not None:
            kwargs["image"] = control_image
    elif task == "img2img":
        kwargs.update(image=image, strength=strength)
        if control_image is not None:
            kwargs["control_image"] = control_image
    else:
        kwargs.update(image=image, mask_image=mask, strength=strength, width=width, height=height)
        if control_image is not None:
            kwargs["control_image"] = control_image
    if controlnet is not None:
        kwargs["controlnet_conditioning_scale"] = (
            spec.controlnet_conditioning_scale or DEFAULT_CONDITIONING_SCALE
        )
    if vae_tiling_for(pipe.vae, size, ctx.runtime.vae_tile_above_pixels):
        ctx.metadata["vae_tiled"] = "yes"
    ctx.monitor.check()
    with contextlib.ExitStack() as attachments:
        scale = spec.controlnet_conditioning_scale or DEFAULT_CONDITIONING_SCALE
        if reference is not None:
            attachments.enter_context(
                reference_attention.attached(pipe, reference, size, scale=scale, seeds=seeds)
            )
        if layout is not None:
            kwargs.update(
                attachments.enter_context(
                    ctx.runtime.composition.attached(
                        ctx.components, pipe, layout, scale=scale, guidance_scale=kwargs["guidance_scale"]
                    )
                )
            )
        with torch.inference_mode():
            results = pipe(**kwargs).images
    ctx.metadata["task"] = (
        task
        + ("+controlnet" if controlnet is not None else "")
        + ("+reference" if reference is not None else "")
        + ("+composition" if layout is not None else "")
    )
    if len(results) != len(seeds):
        raise RuntimeError(f"the pipeline returned {len(results)} images for {len(seeds)} seeds")
    return [result.convert("RGB") for result in results]


def strength_of(spec, default: float) -> float:
    """The spec's denoising strength when it has one (0 included: no denoising), else ``default``."""
    return spec.denoising_strength if spec.HasField("denoising_strength") else default


def denoising_steps(steps: int, strength: float) -> int:
    """Steps an img2img/inpaint pass at ``strength`` really runs: ``steps × strength`` (at least one;
    none at strength 0, where the pass returns its image unchanged).

    Such a pass starts from the input image noised to ``strength``, so only the last ``strength`` of the
    ``steps``-step schedule is left to denoise (diffusers runs ``int(schedule × strength)`` of them).
    """
    strength = proto_float(strength)
    if strength <= 0:
        return 0
    return int(steps_for_strength(steps, strength) * strength)


def steps_for_strength(steps: int, strength: float) -> int:
    """Scheduler steps so that an img2img/inpaint pass at ``strength`` denoises at least one step.

    diffusers runs ``int(steps * strength)`` steps, so 2 steps at strength 0.4 would run none (and fail
    on an empty batch of timesteps); like A1111, run at least one step by raising the schedule length.
    """
    needed = max(int(steps), math.ceil(1.0 / strength - 1e-9))
    while int(needed * strength) < 1:
        needed += 1
    return needed


def _prompt_kwargs(ctx: PassContext) -> dict:
    spec = ctx.spec
    prompt, negative = strip_break(spec.prompt), strip_break(spec.negative_prompt)
    components = ctx.components
    if spec.use_lpw:
        encoder = LpwEncoder(
            components.tokenizers, components.text_encoders, sdxl=components.family == "sdxl"
        )
        return encoder.encode(prompt, negative).pipeline_kwargs()
    return {"prompt": prompt, "negative_prompt": negative}


def prompt_warnings(spec, tokenizer) -> list[str]:
    """Truncation warnings of a spec without use_lpw (the model sees at most 75 tokens)."""
    if spec.use_lpw:
        return []
    found = []
    for text, field in ((spec.prompt, "prompt"), (spec.negative_prompt, "negative prompt")):
        warning = truncation_warning(tokenizer, text, field)
        if warning:
            found.append(warning)
    return found


def proto_float(value: float) -> float:
    """A proto float32 as the decimal the sender meant (0.9 arrives as 0.899999976, which loses a step)."""
    return round(float(value), 6)
