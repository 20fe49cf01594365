"""Raw diffusers vs the engine, pass kind by pass kind, for the GPU bench (``multipass_bench.gpu``).

``raw`` is a plain diffusers pipeline loaded from the same model folder as a user of diffusers would
load it (``from_pretrained`` with the engine's dtype, SDPA attention: ``AttnProcessor2_0``, no
channels_last, nothing of the engine), with the img2img and inpaint pipelines made from it by
``from_pipe``. ``engine`` is ``Engine.run`` on the equivalent ``PassSpec``. Three pass kinds:

* ``base``: txt2img at the family's native size;
* ``person``: the person pass (crop around a standing figure of 20% of a native-size picture, resized
  to the working size, inpainted at strength 0.5, pasted back) vs the inpaint pipeline called on the
  same crop and mask at the same size, strength and steps;
* ``hires``: the hires pass (Lanczos upscale by ``HIRES_SCALE``, img2img at strength 0.4) vs the
  img2img pipeline called on the upscaled picture.

Both sides use the same scheduler (the spec's, ``multipass_diffusion.schedulers.make_scheduler``), prompt,
seed and steps; VAE tiling follows the engine's (it tiles above a pixel count only). it/s = denoising
steps / seconds of the whole call (synchronised on CUDA), so text encoding and the VAE count on both
sides; ``engine_vs_raw`` = 1 / median of the paired engine/raw time ratios (>= 1: the engine is faster).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from multipass_bench import workload
from multipass_bench.timing import interleave

KINDS = ("base", "person", "hires")
PERSON_STRENGTH = 0.5
HIRES_STRENGTH = 0.4
#: Hires factor per family: SD1.5 512 -> 1024; SDXL 1024 -> 1536, which stays at the engine's VAE
#: tiling threshold (1536 x 1536) so that neither side tiles (2048 would tile on the engine's side only).
HIRES_SCALE = {"sd15": 2.0, "sdxl": 1.5}
PERSON_AREA = 0.20
_RAW_CLASSES = {
    "sd15": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    "sdxl": (
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLInpaintPipeline",
    ),
}


@dataclass
class Scenario:
    """One pass kind: the engine's spec and inputs, and the raw pipeline call that does the same work."""

    kind: str
    spec: object
    inputs: object | None
    steps_run: int
    describe: dict = field(default_factory=dict)
    #: Keyword arguments of the raw pipeline call (without scheduler and generator), set by ``prepare``.
    raw_kwargs: dict = field(default_factory=dict)


def sync_for(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


class RawDiffusers:
    """A plain diffusers pipeline set on the model folder: txt2img, img2img and inpaint share modules."""

    def __init__(self, path: Path, family: str, *, device: str, dtype):
        import diffusers
        from diffusers.models.attention_processor import AttnProcessor2_0

        text, image, inpaint = (getattr(diffusers, name) for name in _RAW_CLASSES[family])
        extra = {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}
        started = time.perf_counter()
        pipe = text.from_pretrained(str(path), dtype=dtype, local_files_only=True, **extra)
        pipe.to(device)
        pipe.unet.set_attn_processor(AttnProcessor2_0())
        pipe.set_progress_bar_config(disable=True)
        self.load_seconds = time.perf_counter() - started
        self.pipes = {
            "txt2img": pipe,
            "img2img": image.from_pipe(pipe, dtype=dtype),
            "inpaint": inpaint.from_pipe(pipe, dtype=dtype),
        }
        for built in self.pipes.values():
            built.set_progress_bar_config(disable=True)
        self.attention = sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})
        self.scheduler_config = dict(pipe.scheduler.config)

    def release(self) -> None:
        self.pipes.clear()


def scenarios(name: str, family: str, *, size: int, steps: int, hires_scale: float | None = None) -> dict:
    """The three pass kinds at the family's native ``size``."""
    from multipass_diffusion.passes.sampling import denoising_steps

    side = (size, size)
    picture = workload.scene(side, seed=3)
    mask = workload.box_mask(side, workload.area_box(side, PERSON_AREA))
    scale = hires_scale or HIRES_SCALE[family]
    base = workload.spec(model=name, steps=steps, width=size, height=size, seed=11)
    person = workload.spec(
        kind="person",
        model=name,
        steps=steps,
        seed=12,
        prompt="ohwx woman, red evening gown",
        denoising_strength=PERSON_STRENGTH,
        crop_padding=32,
    )
    hires = workload.spec(kind="hires", model=name, steps=steps, seed=13, scale=scale)
    hires.denoising_strength = HIRES_STRENGTH
    return {
        "base": Scenario("base", base, None, steps, {"size": f"{size}x{size}"}),
        "person": Scenario(
            "person",
            person,
            workload.inputs(image=picture, mask=mask),
            denoising_steps(steps, PERSON_STRENGTH),
            {"image": f"{size}x{size}", "person_area_fraction": PERSON_AREA, "strength": PERSON_STRENGTH},
        ),
        "hires": Scenario(
            "hires",
            hires,
            workload.inputs(image=picture),
            denoising_steps(steps, HIRES_STRENGTH),
            {"image": f"{size}x{size}", "scale": scale, "strength": HIRES_STRENGTH},
        ),
    }


def prepare(engine, scenario: Scenario) -> None:
    """Run the engine's pass once (untimed) and derive the raw call's inputs from what it did."""
    from PIL import Image

    from multipass_diffusion.passes.sampling import proto_float, steps_for_strength

    spec = scenario.spec
    output = engine.run(spec, scenario.inputs)
    metadata = dict(output.metadata)
    scenario.describe["steps_run"] = int(metadata.get("steps_run", scenario.steps_run))
    scenario.steps_run = scenario.describe["steps_run"]
    common = {
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
        "guidance_scale": proto_float(spec.cfg_scale),
        "output_type": "pil",
    }
    if scenario.kind == "base":
        scenario.raw_kwargs = {
            **common,
            "task": "txt2img",
            "num_inference_steps": spec.steps,
            "width": spec.width,
            "height": spec.height,
        }
    elif scenario.kind == "person":
        x0, y0, x1, y1 = _box(metadata["crop_box"])
        width, height = (int(v) for v in metadata["working_size"].split("x"))
        image, mask = scenario.inputs.image, scenario.inputs.mask
        scenario.describe.update(crop_box=metadata["crop_box"], working_size=metadata["working_size"])
        scenario.raw_kwargs = {
            **common,
            "task": "inpaint",
            "image": image.crop((x0, y0, x1, y1)).resize((width, height), Image.Resampling.LANCZOS),
            "mask_image": mask.crop((x0, y0, x1, y1)).resize((width, height), Image.Resampling.BILINEAR),
            "strength": PERSON_STRENGTH,
            "num_inference_steps": steps_for_strength(spec.steps, PERSON_STRENGTH),
            "width": width,
            "height": height,
        }
    else:
        width, height = (int(v) for v in metadata["hires_size"].split("x"))
        if metadata.get("tiled") == "yes":
            raise RuntimeError(
                f"the hires pass re-diffused in tiles at {width}x{height}: choose a smaller scale"
            )
        scenario.describe["hires_size"] = metadata["hires_size"]
        scenario.raw_kwargs = {
            **common,
            "task": "img2img",
            "image": scenario.inputs.image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS),
            "strength": HIRES_STRENGTH,
            "num_inference_steps": steps_for_strength(spec.steps, HIRES_STRENGTH),
        }
    scenario.describe["vae_tiled"] = metadata.get("vae_tiled", "no")


def _box(text: str) -> tuple[int, int, int, int]:
    """The crop box the person pass reports in its metadata (``Box.__str__``)."""
    import re

    numbers = [int(n) for n in re.findall(r"-?\d+", text)]
    if len(numbers) < 4:
        raise ValueError(f"cannot read a crop box from {text!r}")
    return tuple(numbers[:4])


def raw_runner(raw: RawDiffusers, scenario: Scenario, *, device: str, tile_above_pixels: int):
    """A runner for ``timing.interleave``: one raw pipeline call of ``scenario``, seconds."""
    import torch

    from multipass_diffusion.device_tuning import vae_tiling_for
    from multipass_diffusion.schedulers import make_scheduler

    sync = sync_for(device)
    kwargs = dict(scenario.raw_kwargs)
    pipe = raw.pipes[kwargs.pop("task")]
    spec = scenario.spec
    size = (kwargs.get("width") or kwargs["image"].width, kwargs.get("height") or kwargs["image"].height)

    def run() -> float:
        pipe.scheduler = make_scheduler(spec.scheduler, raw.scheduler_config, seed=spec.seed)
        vae_tiling_for(pipe.vae, size, tile_above_pixels)  # as the engine does: tiles above the threshold
        sync()
        begun = time.perf_counter()
        with torch.inference_mode():
            pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(spec.seed))
        sync()
        return time.perf_counter() - begun

    return run


def engine_runner(engine, scenario: Scenario, *, device: str):
    sync = sync_for(device)

    def run() -> float:
        sync()
        begun = time.perf_counter()
        engine.run(scenario.spec, scenario.inputs)
        sync()
        return time.perf_counter() - begun

    return run


def compare(engine, raw: RawDiffusers, scenario: Scenario, *, device: str, repetitions: int) -> dict:
    """Engine vs raw on one pass kind, interleaved after one warm-up of each."""
    paired = interleave(
        engine_runner(engine, scenario, device=device),
        raw_runner(raw, scenario, device=device, tile_above_pixels=engine.settings.vae_tile_above_pixels),
        repetitions=repetitions,
    )
    steps = scenario.steps_run
    return {
        **scenario.describe,
        "raw_its": round(steps / statistics.median(paired.b), 3),
        "engine_its": round(steps / statistics.median(paired.a), 3),
        "engine_vs_raw": round(1.0 / paired.median_ratio, 4),
        "engine_over_raw": round(paired.median_ratio, 4),
        **paired.summary("engine", "raw"),
    }
