"""Engine-level figures, in-process on the tiny SD1.5 model: crop vs whole-image inpaint, LoRA switching,
the pass cache. Each function takes a loaded engine (``workload.make_engine``) and returns
``(figure, details)``."""

from __future__ import annotations

import statistics

from multipass_bench import workload
from multipass_bench.report import MetricUnavailable
from multipass_bench.timing import interleave, timed

#: Steps of a pass; inpainting at strength 0.5 runs int(20 * 0.5) = 10 of them.
STEPS = 20
STRENGTH = 0.5


# -- crop-inpaint vs whole-image inpaint ---------------------------------------------------------------


def crop_vs_full(engine, *, image_side: int = 1024, fraction: float = 0.20, repetitions: int = 3) -> tuple:
    """Time of inpainting one person (``fraction`` of a square image) on the whole image at full size
    (the base pass's prompt-mask inpaint) over the person pass (crop at the working size, paste back),
    at equal steps and strength."""
    size = (image_side, image_side)
    image = workload.scene(size, seed=3)
    box = workload.area_box(size, fraction)
    mask = workload.box_mask(size, box)
    person = workload.spec(
        kind="person",
        prompt="ohwx woman, red evening gown",
        denoising_strength=STRENGTH,
        steps=STEPS,
        crop_padding=32,
        crop_factor=1.0,
    )
    full = workload.spec(
        kind="base", prompt="ohwx woman, red evening gown", denoising_strength=STRENGTH, steps=STEPS
    )
    seen: dict[str, dict] = {}

    def run(name, pass_spec):
        def runner():
            output = engine.run(pass_spec, workload.inputs(image=image, mask=mask))
            seen[name] = dict(output.metadata)
            return output.duration_seconds

        return runner

    paired = interleave(run("full", full), run("crop", person), repetitions=repetitions)
    if seen["full"].get("steps_run") != seen["crop"].get("steps_run"):
        raise MetricUnavailable(f"unequal steps: full {seen['full']}, crop {seen['crop']}")
    details = {
        "image": f"{image_side}x{image_side}",
        "person_box": list(box),
        "person_area_fraction": round((box[2] - box[0]) * (box[3] - box[1]) / (image_side**2), 4),
        "steps": STEPS,
        "denoising_strength": STRENGTH,
        "steps_run": int(seen["crop"]["steps_run"]),
        "crop_box": seen["crop"].get("crop_box"),
        "crop_working_size": seen["crop"].get("working_size"),
        "full_working_size": seen["full"].get("working_size"),
        "engine_working_size": engine.settings.working_size_for("sd15"),
        **paired.summary("full", "crop"),
    }
    return paired.median_ratio, details


# -- LoRA switching -----------------------------------------------------------------------------------


def lora_switch(
    engine,
    loras: list[workload.Lora],
    *,
    repetitions: int = 4,
    model: str = workload.SD15,
    side: int = workload.SD15_WORKING_SIZE,
    steps: int = STEPS,
    sync=None,
) -> tuple:
    """Cost of making a person's LoRA active for a pass, as a fraction of a person pass: with the
    adapter cache (both LoRAs resident, ``set_adapters`` switches) and loading the LoRA from disk each
    time (the same AdapterCache with a 1-byte budget: every activation reads the file, loads it into
    the UNet and text encoder, and evicts the other). Alternates two LoRAs, as consecutive persons do.
    ``sync`` (e.g. ``torch.cuda.synchronize``) runs after each activation, inside its timing, so work the
    activation queued on a device counts."""
    from multipass_diffusion.adapters import AdapterRequest

    if len(loras) < 2:
        raise ValueError("two LoRAs are needed to switch between them")
    runtime = engine.runtime(model)
    cache = runtime.adapters
    requests = [AdapterRequest(lora.tune_id, lora.path, lora.sha256, lora.weight) for lora in loras[:2]]
    budget = cache.budget_bytes
    size = (side, side)
    image = workload.scene(size, seed=4)
    mask = workload.box_mask(size, workload.area_box(size, 0.2))

    def person_pass(lora):
        pass_spec = workload.with_lora(
            workload.spec(
                kind="person", model=model, prompt="ohwx woman", denoising_strength=STRENGTH, steps=steps
            ),
            lora,
        )
        return engine.run(pass_spec, workload.inputs(image=image, mask=mask, loras=[lora])).duration_seconds

    cached_activation: list[float] = []
    disk_activation: list[float] = []
    cached_pass: list[float] = []
    disk_pass: list[float] = []
    try:
        # Warm-up: both resident, both code paths run once.
        for lora in loras[:2]:
            person_pass(lora)
        for index in range(repetitions):
            modes = ("disk", "cached") if index % 2 == 0 else ("cached", "disk")
            for mode in modes:
                cache.budget_bytes = 1 if mode == "disk" else budget
                if mode == "cached":
                    for request in requests:  # make both resident again (untimed)
                        cache.activate([request])
                target = disk_activation if mode == "disk" else cached_activation
                for request in requests:
                    seconds, _ = timed(lambda request=request: _synced(cache.activate([request]), sync))
                    target.append(seconds)
                passes = disk_pass if mode == "disk" else cached_pass
                for lora in loras[:2]:
                    passes.append(person_pass(lora))
    finally:
        cache.budget_bytes = budget
        cache.deactivate()
    pass_seconds = statistics.median(cached_pass)
    cached = statistics.median(cached_activation)
    disk = statistics.median(disk_activation)
    details = {
        "cached_fraction": round(cached / pass_seconds, 6),
        "disk_fraction": round(disk / pass_seconds, 6),
        "disk_over_cached": round(disk / cached, 2),
        "activation_seconds_cached_median": round(cached, 6),
        "activation_seconds_disk_median": round(disk, 6),
        "activation_seconds_cached": [round(x, 6) for x in cached_activation],
        "activation_seconds_disk": [round(x, 6) for x in disk_activation],
        "person_pass_seconds_cached_median": round(pass_seconds, 4),
        "person_pass_seconds_disk_median": round(statistics.median(disk_pass), 4),
        "person_pass": f"{size[0]}x{size[1]} image, working size "
        f"{engine.settings.working_size_for(runtime.family)}, {steps} steps at strength {STRENGTH}",
        "lora": "random LoRAs on the UNet attention and text-encoder projections (write_random_lora), "
        f"{loras[0].path.stat().st_size} bytes each",
        "repetitions": repetitions,
    }
    return cached / pass_seconds, details


def _synced(result, sync):
    if sync is not None:
        sync()
    return result


# -- pass cache -----------------------------------------------------------------------------------------


def two_person_job(
    engine,
    loras: list[workload.Lora],
    *,
    seed: int,
    prompts: tuple[str, str],
    side: int,
    model: str = workload.SD15,
    steps: int = STEPS,
):
    """base txt2img + person-0 + person-1 (sequential on the updated image); the pass outputs."""
    size = (side, side)
    base = engine.run(
        workload.spec(kind="base", model=model, seed=seed, steps=steps, width=side, height=side)
    )
    image = base.image
    outputs = [base]
    for index, prompt in enumerate(prompts):
        centre = 0.27 if index == 0 else 0.73
        mask = workload.box_mask(size, workload.area_box(size, 0.15, centre_x=centre))
        lora = loras[index % len(loras)]
        pass_spec = workload.with_lora(
            workload.spec(
                kind="person",
                model=model,
                seed=seed,
                steps=steps,
                prompt=prompt,
                denoising_strength=STRENGTH,
                crop_padding=32,
            ),
            lora,
        )
        output = engine.run(pass_spec, workload.inputs(image=image, mask=mask, loras=[lora]))
        outputs.append(output)
        image = output.image
    return outputs


def pass_cache_speedup(engine, loras: list[workload.Lora], *, side: int = 512, repetitions: int = 3) -> tuple:
    """A cold two-person job over the same job resubmitted with only person 1's prompt changed (base and
    person 0 come from the pass cache, person 1 runs), with the engine's in-process MemoryPassCache."""
    from multipass_diffusion.pass_cache import MemoryPassCache

    prompts = ("ohwx woman, red evening gown", "ohwx man, black tuxedo")
    changed = ("ohwx woman, red evening gown", "ohwx man, white dinner jacket")
    cold_seconds, warm_seconds, hits = [], [], []
    # Warm-up (models, adapters), not timed.
    with workload.pass_cache(engine, MemoryPassCache()):
        two_person_job(engine, loras, seed=99, prompts=prompts, side=side)
    for index in range(repetitions):
        with workload.pass_cache(engine, MemoryPassCache()):
            seed = 1000 + index
            seconds, cold = timed(
                lambda seed=seed: two_person_job(engine, loras, seed=seed, prompts=prompts, side=side)
            )
            cold_seconds.append(seconds)
            seconds, warm = timed(
                lambda seed=seed: two_person_job(engine, loras, seed=seed, prompts=changed, side=side)
            )
            warm_seconds.append(seconds)
        if any(output.cache_hit for output in cold):
            raise MetricUnavailable("the cold job hit the pass cache")
        if not warm[0].cache_hit:
            raise MetricUnavailable("the resubmitted job's base pass missed the pass cache")
        if warm[2].cache_hit:
            raise MetricUnavailable("the changed person pass hit the pass cache")
        hits.append([output.cache_hit for output in warm])
    ratios = [c / w for c, w in zip(cold_seconds, warm_seconds, strict=True)]
    engine.runtime(workload.SD15).adapters.deactivate()
    details = {
        "job": f"base {side}x{side} txt2img {STEPS} steps, then two person passes (LoRA each, strength "
        f"{STRENGTH}, working size {engine.settings.working_size_for('sd15')})",
        "cache": "MemoryPassCache (in-process); the worker's default is the store-backed cache",
        "cold_seconds": [round(x, 4) for x in cold_seconds],
        "changed_seconds": [round(x, 4) for x in warm_seconds],
        "cold_seconds_median": round(statistics.median(cold_seconds), 4),
        "changed_seconds_median": round(statistics.median(warm_seconds), 4),
        "changed_job_cache_hits": hits[-1] if hits else [],
        "ratios": [round(r, 4) for r in ratios],
        "repetitions": repetitions,
    }
    return statistics.median(ratios), details
