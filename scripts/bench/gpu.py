"""GPU benchmark on the real SD1.5 and SDXL architectures with random weights (``scripts/bench_gpu.py``,
``multipass bench --gpu``, and ``scripts/gpu_check.sh``).

For each family the model is built from the published component configs (``multipass_bench.gpu_models``)
with random weights, saved in diffusers format and loaded by the production engine (no download). Then,
on one device and interleaved after a warm-up (``multipass_bench.timing``):

* ``passes``: raw diffusers (a plain pipeline loaded from the same folder: SDPA attention, fp16 on
  CUDA) vs ``Engine.run``, for the base, person (crop) and hires passes (``multipass_bench.gpu_passes``):
  it/s of each and ``engine_vs_raw`` (the family's top-level ``raw_its``/``engine_its``/
  ``engine_over_raw`` are the base pass's);
* ``two_person_job``: a two-person job end to end in-process at ``JOB_SIDE`` x ``JOB_SIDE`` (base txt2img
  + two person passes with a random LoRA each; cold = first LoRA loads, warm = again), with its peak
  GPU memory;
* ``lora_switch_ms`` / ``lora_switch_fraction``: the cost of making a person's LoRA active, in ms and as a
  fraction of a person pass (``multipass_bench.engine_bench.lora_switch``);
* ``batched_base``: a job's ``BATCH_IMAGES`` base passes as one ``Engine.run_batch`` call vs one call each
  (``speedup`` = median of the paired sequential/batched ratios);
* ``peak_memory``: ``torch.cuda.max_memory_allocated`` over the family's figures (on CPU: the process's
  peak RSS);
* ``compiled``: the same engine with ``MULTIPASS_DIFFUSION_COMPILE`` on (UNet compiled, LoRAs hot-swapped;
  ``multipass_bench.compile_bench``), per pass kind, with ``vs_raw_eager`` = compiled it/s / raw eager
  it/s. Measured after every family's eager figures, on CUDA only unless ``--compile on`` (else the JSON
  says why it was skipped).

``targets`` holds the checks: engine it/s >= 0.97x raw (eager, every pass kind), compiled SD1.5 base it/s
>= 1.4x raw eager, LoRA switch < 5% of a person pass, SDXL engine base it/s >= raw. A figure that was not
measured is null and its reason says why (``--budget-s`` skips the stages that would start past it).
``--tiny`` uses tiny configs of the same architectures and runs on CPU. Targets, the time box and peak
memory are in ``multipass_bench.gpu_report``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from multipass_bench import compile_bench, engine_bench, gpu_passes, report, workload
from multipass_bench.gpu_models import (  # noqa: F401  (the configs are read as gpu.* too)
    BUILD_VERSION,
    CONFIGS,
    NATIVE,
    SD15,
    SD15_TINY,
    SDXL,
    SDXL_TINY,
    build_model,
    model_name,
)
from multipass_bench.gpu_report import (  # noqa: F401  (TARGETS is read as gpu.TARGETS too)
    COMPILED_PART_S,
    FAMILIES,
    TARGETS,
    Budget,
    peak_memory,
    reset_peak,
    targets,
    write_progress,
)
from multipass_bench.timing import interleave

#: Base passes of one job run as one batch in the ``batched_base`` comparison.
BATCH_IMAGES = 4
#: Side of the two-person job; with --tiny on CPU a smaller one keeps the smoke run short.
JOB_SIDE = 1024
JOB_SIDE_TINY = 256


@dataclass
class _Measured:
    """What the compiled stage needs of a family measured eagerly."""

    family: str
    name: str
    size: int
    steps: int
    settings: object
    scenarios: dict
    loras: list
    raw_its: dict


def _sync(device: str) -> None:
    gpu_passes.sync_for(device)()


def _settings(root: Path, name: str, *, device: str, dtype_name: str, size: int):
    from multipass_diffusion.settings import DiffusionSettings

    return DiffusionSettings.from_env(
        {
            "MULTIPASS_MODEL_DIR": str(root),
            "MULTIPASS_DIFFUSION_DEVICE": device,
            "MULTIPASS_DIFFUSION_DTYPE": dtype_name,
            "MULTIPASS_DIFFUSION_MODELS": name,
            "MULTIPASS_DIFFUSION_WORKING_SIZE": str(size),
            "MULTIPASS_DIFFUSION_PASS_CACHE": "off",
        }
    )


def bench_family(
    root: Path,
    family: str,
    *,
    tiny: bool,
    device: str,
    steps: int,
    repetitions: int,
    lora_rank: int,
    job_side: int | None = None,
    budget: Budget | None = None,
) -> tuple[dict, _Measured]:
    """The family's eager figures, and what its compiled stage needs."""
    import torch

    from multipass_diffusion.engine import Engine

    budget = budget or Budget(None)
    dtype_name = "float16" if device.startswith("cuda") else "float32"
    dtype = getattr(torch, dtype_name)
    name = model_name(family, tiny)
    size = NATIVE[(family, tiny)]
    started = time.perf_counter()
    path = build_model(root, family, tiny=tiny, device=device, dtype=dtype)
    built = time.perf_counter() - started
    settings = _settings(root, name, device=device, dtype_name=dtype_name, size=size)
    engine = Engine(settings)
    started = time.perf_counter()
    engine.load()
    loaded = time.perf_counter() - started
    raw = gpu_passes.RawDiffusers(path, family, device=device, dtype=dtype)
    scenarios = gpu_passes.scenarios(name, family, size=size, steps=steps)
    passes: dict[str, dict | str] = {}
    for kind, scenario in scenarios.items():
        reason = budget(f"the {kind} pass comparison") if kind != "base" else None
        if reason:
            passes[kind] = reason
            continue
        gpu_passes.prepare(engine, scenario)
        passes[kind] = gpu_passes.compare(engine, raw, scenario, device=device, repetitions=repetitions)
    raw_load = raw.load_seconds
    attention = raw.attention
    passes_peak = peak_memory(device, "the pass comparisons (the engine and the raw pipelines: two copies)")
    raw.release()
    del raw
    _release(device)  # the raw pipelines' weights go; the figures below are the engine's alone
    base = passes["base"]
    result = {
        "model": name,
        "size": f"{size}x{size}",
        "steps": steps,
        "dtype": dtype_name,
        "raw": f"diffusers {_version('diffusers')} pipelines from_pretrained, attention {', '.join(attention)}",
        "raw_its": base["raw_its"],
        "engine_its": base["engine_its"],
        "engine_vs_raw": base["engine_vs_raw"],
        "engine_vs_raw_target": f"{TARGETS['engine_vs_raw_eager'][0]} {TARGETS['engine_vs_raw_eager'][1]}",
        "engine_vs_raw_met": base["engine_vs_raw"] >= TARGETS["engine_vs_raw_eager"][1],
        "engine_over_raw": base["engine_over_raw"],
        **{k: base[k] for k in ("engine_seconds_median", "raw_seconds_median", "ratios", "repetitions")},
        "passes": passes,
    }
    loras = _loras(path, root / "loras" / name, rank=lora_rank)
    side = job_side or (JOB_SIDE_TINY if tiny else JOB_SIDE)
    reason = budget("the two-person job")
    result["two_person_job"] = reason or two_person_job(
        engine, loras, name=name, side=side, steps=steps, device=device
    )
    reason = budget("the LoRA switch")
    if reason:
        result["lora_switch_fraction"] = result["lora_switch_ms"] = None
        result["lora_switch"] = reason
    else:
        fraction, switch = engine_bench.lora_switch(
            engine,
            loras,
            repetitions=max(2, repetitions),
            model=name,
            side=size,
            steps=steps,
            sync=gpu_passes.sync_for(device),
        )
        result["lora_switch_fraction"] = round(fraction, 6)
        result["lora_switch_ms"] = round(switch["activation_seconds_cached_median"] * 1000, 3)
        result["lora_switch_ms_disk"] = round(switch["activation_seconds_disk_median"] * 1000, 3)
        result["lora_switch"] = switch
    reason = budget("the batched base comparison")
    result["batched_base"] = reason or batched_base(
        engine, scenarios["base"].spec, device=device, repetitions=repetitions
    )
    result["peak_memory"] = peak_memory(device, "the job, LoRA switch and batch (the engine alone)")
    result["peak_memory_passes"] = passes_peak
    if device.startswith("cuda"):
        result["max_memory_allocated_bytes"] = result["peak_memory"]["bytes"]
    result["build_seconds"] = round(built, 1)
    result["load_seconds"] = round(loaded, 1)
    result["raw_load_seconds"] = round(raw_load, 1)
    raw_its = {k: v["raw_its"] for k, v in passes.items() if isinstance(v, dict)}
    measured = _Measured(family, name, size, steps, settings, scenarios, loras, raw_its)
    del engine
    return result, measured


def two_person_job(engine, loras, *, name: str, side: int, steps: int, device: str) -> dict:
    """Base txt2img at side x side + two person passes (a LoRA each), cold then warm."""
    job: dict = {"size": f"{side}x{side}", "persons": "two person passes, strength 0.5, a random LoRA each"}
    reset_peak(device)
    for label, seed in (("cold", 21), ("warm", 22)):
        begun = time.perf_counter()
        outputs = engine_bench.two_person_job(
            engine, loras, seed=seed, prompts=("ohwx woman", "ohwx man"), side=side, model=name, steps=steps
        )
        _sync(device)
        job[f"{label}_seconds"] = round(time.perf_counter() - begun, 4)
        job[f"{label}_passes"] = {
            n: round(o.duration_seconds, 4)
            for n, o in zip(("base", "person-0", "person-1"), outputs, strict=True)
        }
    job["peak_memory"] = peak_memory(device, "the job (the engine alone)")
    return job


def batched_base(engine, spec, *, device: str, repetitions: int, images: int = BATCH_IMAGES) -> dict:
    """``images`` base passes of ``spec`` (seeds spec.seed + k) as one batch vs one call each."""
    seeds = [spec.seed + index for index in range(images)]

    def seeded(seed: int):
        one = type(spec)()
        one.CopyFrom(spec)
        one.seed = seed
        return one

    def sequential() -> float:
        _sync(device)
        begun = time.perf_counter()
        for seed in seeds:
            engine.run(seeded(seed))
        _sync(device)
        return time.perf_counter() - begun

    def batched() -> float:
        _sync(device)
        begun = time.perf_counter()
        outputs = engine.run_batch(spec, seeds)
        _sync(device)
        if any(output.metadata.get("batch") != str(images) for output in outputs):
            raise RuntimeError("the base passes did not run as one batch")
        return time.perf_counter() - begun

    paired = interleave(sequential, batched, repetitions=repetitions)
    figures = {
        "images": images,
        "speedup": round(paired.median_ratio, 4),
        "images_per_s_sequential": round(images / statistics.median(paired.a), 4),
        "images_per_s_batched": round(images / statistics.median(paired.b), 4),
        **paired.summary("sequential", "batched"),
    }
    if device.startswith("cuda"):
        import torch

        figures["max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return figures


def compiled_stage(
    measured: _Measured,
    *,
    device: str,
    repetitions: int,
    lora_rank: int,
    compile_request: str,
    budget: Budget,
    backend: str = "inductor",
) -> dict | str:
    """The compiled engine beside a freshly loaded uncompiled one, per pass kind; or why it was skipped."""
    from multipass_diffusion.engine import Engine

    reason = compile_bench.skipped(device, compile_request) or budget.before_deadline(
        "the compiled variant", needs=2 * COMPILED_PART_S
    )
    if reason:
        return reason
    plain = Engine(measured.settings)
    plain.load()
    compiled = compile_bench.compiled_variant(
        plain,
        measured.scenarios["base"].spec,
        measured.loras,
        name=measured.name,
        size=measured.size,
        steps=measured.steps,
        repetitions=repetitions,
        lora_rank=lora_rank,
        sync=gpu_passes.sync_for(device),
        backend=backend,
        scenarios={k: s for k, s in measured.scenarios.items() if k in measured.raw_its},
        budget=budget.before_deadline,
    )
    raw_base = measured.raw_its.get("base")
    compiled["vs_raw_eager"] = round(compiled["engine_its"] / raw_base, 4) if raw_base else None
    for kind, figures in compiled.get("passes", {}).items():
        if isinstance(figures, dict) and measured.raw_its.get(kind):
            figures["vs_raw_eager"] = round(figures["engine_its"] / measured.raw_its[kind], 4)
    compiled["peak_memory"] = peak_memory(device, "the plain and the compiled engine")
    del plain
    return compiled


def _release(device: str) -> None:
    """Free what went out of scope (an engine, the raw pipelines) before the next figures."""
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _loras(model_path: Path, directory: Path, *, rank: int) -> list[workload.Lora]:
    from multipass_dev.tiny_models.diffusion import write_random_lora

    loras = []
    for index in range(2):
        path = directory / f"lora-{index}-r{rank}.safetensors"
        if not path.exists():
            write_random_lora(model_path, path, seed=700 + index, rank=rank)
        loras.append(workload.Lora(f"80000{index}", path, hashlib.sha256(path.read_bytes()).hexdigest()))
    return loras


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench_gpu.py",
        description="Raw diffusers vs the engine on the real SD1.5/SDXL architectures (random weights).",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny configs of the same architectures (CPU is fine)"
    )
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default: cuda when available)")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated: sd15, sdxl")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--lora-rank", type=int, default=None, help="rank of the random LoRAs (32; tiny 4)")
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="measure the compiled-UNet variant with LoRA hot-swap (auto: on CUDA only)",
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="dynamo backend of the compiled variant (inductor; 'eager' checks the code path in seconds)",
    )
    parser.add_argument(
        "--compile-families", default=None, help="families whose compiled variant runs (default: --families)"
    )
    parser.add_argument(
        "--job-side",
        type=int,
        default=None,
        help=f"side of the two-person job ({JOB_SIDE}; tiny {JOB_SIDE_TINY})",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="seconds after which the stages not yet started are skipped with a reason (default: none)",
    )
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help=f"seconds the run should end by: a part of the compiled variant (a pass kind, the LoRA switch) "
        f"starts only with {COMPILED_PART_S} s left (default: none)",
    )
    parser.add_argument(
        "--json-out", type=Path, default=None, help="also write the result (and progress) here"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where models go (default .multipass/bench-gpu)"
    )
    parser.add_argument(
        "--json", action="store_true", help="accepted for symmetry; the output is JSON anyway"
    )
    args = parser.parse_args(argv)
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if device == "cpu" and not args.tiny:
        parser.error("the real architectures need a GPU; on CPU run with --tiny")
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    compiling = (
        families
        if args.compile_families is None
        else [f.strip() for f in args.compile_families.split(",") if f.strip()]
    )
    bad = [f for f in families + compiling if f not in FAMILIES]
    if bad:
        parser.error(f"unknown families: {', '.join(bad)}")
    root = (args.dir or workload.bench_dir().parent / "bench-gpu").absolute()
    if device == "cpu":
        workload.set_threads(1)
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # random fp16 weights decode to NaN images
    budget = Budget(args.budget_s, args.deadline_s)
    lora_rank = args.lora_rank or (4 if args.tiny else 32)
    versions = report.versions()
    versions.update({name: _version(name) for name in ("peft", "accelerate", "huggingface_hub", "protobuf")})
    result = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "tiny": args.tiny,
        "settings": {
            "steps": args.steps,
            "repetitions": args.repetitions,
            "lora_rank": lora_rank,
            "compile": args.compile,
            "compile_backend": args.compile_backend,
            "compile_families": compiling,
            "budget_s": args.budget_s,
            "deadline_s": args.deadline_s,
        },
        "families": {},
        "machine": report.machine_info(),
        "versions": versions,
    }
    measured: dict[str, _Measured] = {}
    for family in families:
        report.say(
            f"gpu bench: {family} ({'tiny configs' if args.tiny else 'real architecture'}) on {device}"
        )
        _release(device)
        result["families"][family], measured[family] = bench_family(
            root,
            family,
            tiny=args.tiny,
            device=device,
            steps=args.steps,
            repetitions=args.repetitions,
            lora_rank=lora_rank,
            job_side=args.job_side,
            budget=budget,
        )
        _release(device)
        write_progress(args.json_out, result)
    for family in families:
        if family not in compiling:
            result["families"][family]["compiled"] = (
                f"skipped: not in --compile-families {','.join(compiling)}"
            )
            continue
        report.say(f"gpu bench: {family} compiled on {device}")
        result["families"][family]["compiled"] = compiled_stage(
            measured[family],
            device=device,
            repetitions=args.repetitions,
            lora_rank=lora_rank,
            compile_request=args.compile,
            budget=budget,
            backend=args.compile_backend,
        )
        _release(device)
        write_progress(args.json_out, result)
    result["targets"] = targets(result["families"])
    met = [entry["met"] for entry in result["targets"].values()]
    result["targets_met"] = False if False in met else (True if all(met) else None)
    result["elapsed_seconds"] = round(budget.elapsed(), 1)
    result["complete"] = True
    write_progress(args.json_out, result)
    print(report.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
