"""GPU benchmark on the real SD1.5 and SDXL architectures with random weights (``scripts/bench_gpu.py``,
``multipass bench --gpu``).

For each family the model is built from the published component configs (runwayml SD1.5, SDXL base 1.0:
UNet, VAE, CLIP text encoder(s); the CLIP BPE vocabulary derived offline as for the tiny models), with
random weights, saved in diffusers format and loaded by the production engine (no download). Then, on
one device and interleaved after a warm-up:

* ``raw``: the engine's own text-to-image pipeline object called directly (same scheduler, prompt,
  seed, size, steps), i.e. diffusers without the engine around it;
* ``engine``: ``Engine.run`` on the equivalent base ``PassSpec``;

it/s = steps / seconds of the whole call (CUDA synchronised). ``engine_over_raw`` = median of paired
engine/raw time ratios (target <= 1.05). Then a two-person job through the engine (base + two person
passes with a random LoRA each; cold = first LoRA loads, warm = again), the LoRA switch cost on the
real architecture, and ``batched_base``: a job's ``BATCH_IMAGES`` base passes as one ``Engine.run_batch``
call (batch size 4, one generator per seed) vs four ``Engine.run`` calls, interleaved (``speedup`` =
median of the paired sequential/batched ratios). ``compiled``: the same engine with the UNet compiled
and LoRAs hot-swapped (``multipass_bench.compile_bench``; CUDA only unless ``--compile on``, else the
JSON says why it was skipped). ``--tiny`` uses tiny configs of the same architectures and runs on CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

from multipass_bench import compile_bench, engine_bench, report, workload
from multipass_bench.timing import interleave

FAMILIES = ("sd15", "sdxl")
#: Base passes of one job run as one batch in the ``batched_base`` comparison.
BATCH_IMAGES = 4
NATIVE = {("sd15", False): 512, ("sdxl", False): 1024, ("sd15", True): 64, ("sdxl", True): 64}
BUILD_VERSION = "bench-gpu-v1"

_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
}


def _clip_text(hidden: int, layers: int, heads: int, intermediate: int, act: str, projection: int) -> dict:
    return {
        "vocab_size": 49408,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 77,
        "hidden_act": act,
        "projection_dim": projection,
        "layer_norm_eps": 1e-05,
        "bos_token_id": 0,
        "pad_token_id": 1,
        "eos_token_id": 2,
    }


def _vae(channels, layers: int, groups: int, sample: int, scaling: float, upcast: bool) -> dict:
    return {
        "act_fn": "silu",
        "block_out_channels": list(channels),
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "layers_per_block": layers,
        "norm_num_groups": groups,
        "sample_size": sample,
        "scaling_factor": scaling,
        "force_upcast": upcast,
    }


#: runwayml/stable-diffusion-v1-5 (unet, vae, text_encoder = CLIP ViT-L/14 text tower).
SD15 = {
    "unet": {
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    },
    "vae": _vae((128, 256, 512, 512), 2, 32, 512, 0.18215, False),
    "text_encoder": _clip_text(768, 12, 12, 3072, "quick_gelu", 768),
}
#: stabilityai/stable-diffusion-xl-base-1.0 (text_encoder_2 = OpenCLIP ViT-bigG/14 text tower).
SDXL = {
    "unet": {
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 2048,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 2816,
        "sample_size": 128,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": True,
    },
    "vae": _vae((128, 256, 512, 512), 2, 32, 1024, 0.13025, True),
    "text_encoder": _clip_text(768, 12, 12, 3072, "quick_gelu", 768),
    "text_encoder_2": _clip_text(1280, 32, 20, 5120, "gelu", 1280),
}
#: The same architectures, tiny (the shapes of multipass_dev.tiny_models).
SD15_TINY = {
    "unet": {
        **SD15["unet"],
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "sample_size": 8,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "cross_attention_dim": 32,
        "norm_num_groups": 8,
    },
    "vae": _vae((8, 16, 32, 32), 1, 8, 64, 0.18215, False),
    "text_encoder": _clip_text(32, 2, 2, 64, "quick_gelu", 32),
}
SDXL_TINY = {
    "unet": {
        **SDXL["unet"],
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "sample_size": 8,
        "attention_head_dim": [2, 4],
        "addition_time_embed_dim": 8,
        "addition_embed_type_num_heads": 8,
        "transformer_layers_per_block": [1, 2],
        "projection_class_embeddings_input_dim": 6 * 8 + 32,
        "cross_attention_dim": 64,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "norm_num_groups": 8,
    },
    "vae": _vae((8, 16, 32, 32), 1, 8, 64, 0.13025, True),
    "text_encoder": _clip_text(32, 2, 2, 64, "quick_gelu", 32),
    "text_encoder_2": _clip_text(32, 2, 2, 64, "gelu", 32),
}
CONFIGS = {("sd15", False): SD15, ("sdxl", False): SDXL, ("sd15", True): SD15_TINY, ("sdxl", True): SDXL_TINY}


def model_name(family: str, tiny: bool) -> str:
    return f"{family}-{'tinycfg' if tiny else 'random'}"


def build_model(root: Path, family: str, *, tiny: bool, device: str, dtype) -> Path:
    """Random weights for ``family``'s configs saved in diffusers format under ``root/diffusion/<name>``."""
    import diffusers
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    configs = CONFIGS[(family, tiny)]
    target = Path(root) / "diffusion" / model_name(family, tiny)
    marker = target / ".bench-gpu-built"
    stamp = BUILD_VERSION + json.dumps(configs, sort_keys=True)
    if marker.is_file() and marker.read_text() == stamp:
        return target
    tokenizer_files = _vocab(Path(root) / ".clip-vocab")
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        text_encoder_2 = (
            CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
            if "text_encoder_2" in configs
            else None
        )
    modules = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            **modules,
            text_encoder_2=text_encoder_2,
            tokenizer=_tokenizer(tokenizer_files, "<|endoftext|>"),
            tokenizer_2=_tokenizer(tokenizer_files, "!"),
            scheduler=EulerDiscreteScheduler(**_SCHEDULER, timestep_spacing="leading"),
        )
    else:
        pipe = StableDiffusionPipeline(
            **modules,
            tokenizer=_tokenizer(tokenizer_files, "<|endoftext|>"),
            scheduler=PNDMScheduler(**_SCHEDULER, skip_prk_steps=True, set_alpha_to_one=False),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.to(dtype=dtype)
    pipe.save_pretrained(target, safe_serialization=True)
    marker.write_text(stamp)
    del pipe, modules, unet, vae, text_encoder, text_encoder_2
    gc.collect()
    return target


def _vocab(directory: Path):
    # The CLIP BPE vocabulary exactly as the tiny models derive it (offline, from open_clip's merges).
    from multipass_dev.tiny_models.diffusion import _write_clip_vocab

    return _write_clip_vocab(directory)


def _tokenizer(files, pad_token: str):
    from multipass_dev.tiny_models.diffusion import _tokenizer as tokenizer

    return tokenizer(files, pad_token)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def bench_family(
    root: Path,
    family: str,
    *,
    tiny: bool,
    device: str,
    steps: int,
    repetitions: int,
    lora_rank: int,
    compile_request: str = "auto",
) -> dict:
    import torch

    from multipass_diffusion.engine import Engine
    from multipass_diffusion.schedulers import make_scheduler
    from multipass_diffusion.settings import DiffusionSettings

    dtype_name = "float16" if device.startswith("cuda") else "float32"
    dtype = getattr(torch, dtype_name)
    name = model_name(family, tiny)
    size = NATIVE[(family, tiny)]
    started = time.perf_counter()
    path = build_model(root, family, tiny=tiny, device=device, dtype=dtype)
    built = time.perf_counter() - started
    settings = DiffusionSettings.from_env(
        {
            "MULTIPASS_MODEL_DIR": str(root),
            "MULTIPASS_DIFFUSION_DEVICE": device,
            "MULTIPASS_DIFFUSION_DTYPE": dtype_name,
            "MULTIPASS_DIFFUSION_MODELS": name,
            "MULTIPASS_DIFFUSION_WORKING_SIZE": str(size),
            "MULTIPASS_DIFFUSION_PASS_CACHE": "off",
        }
    )
    engine = Engine(settings)
    started = time.perf_counter()
    engine.load()
    loaded = time.perf_counter() - started
    runtime = engine.runtime(name)
    pipe = runtime.base.pipe
    spec = workload.spec(model=name, steps=steps, width=size, height=size, seed=11)

    def raw() -> float:
        pipe.scheduler = make_scheduler(spec.scheduler, runtime.base.scheduler_config, seed=spec.seed)
        _sync(device)
        begun = time.perf_counter()
        with torch.inference_mode():
            pipe(
                prompt=spec.prompt,
                negative_prompt=spec.negative_prompt,
                num_inference_steps=steps,
                guidance_scale=spec.cfg_scale,
                width=size,
                height=size,
                generator=torch.Generator("cpu").manual_seed(spec.seed),
                output_type="pil",
            )
        _sync(device)
        return time.perf_counter() - begun

    def through_engine() -> float:
        _sync(device)
        begun = time.perf_counter()
        engine.run(spec)
        _sync(device)
        return time.perf_counter() - begun

    paired = interleave(through_engine, raw, repetitions=repetitions)
    raw_its = steps / statistics.median(paired.b)
    engine_its = steps / statistics.median(paired.a)
    loras = _loras(path, root / "loras" / name, rank=lora_rank)
    job = {}
    for label, seed in (("cold", 21), ("warm", 22)):
        begun = time.perf_counter()
        outputs = engine_bench.two_person_job(
            engine, loras, seed=seed, prompts=("ohwx woman", "ohwx man"), side=size, model=name, steps=steps
        )
        _sync(device)
        job[f"{label}_seconds"] = round(time.perf_counter() - begun, 4)
        job[f"{label}_passes"] = {
            n: round(o.duration_seconds, 4)
            for n, o in zip(("base", "person-0", "person-1"), outputs, strict=True)
        }
    switch_fraction, switch = engine_bench.lora_switch(
        engine, loras, repetitions=max(2, repetitions), model=name, side=size, steps=steps
    )
    batched = batched_base(engine, spec, device=device, repetitions=repetitions)
    compiled = compile_bench.skipped(device, compile_request)
    if compiled is None:
        compiled = compile_bench.compiled_variant(
            engine,
            spec,
            loras,
            name=name,
            size=size,
            steps=steps,
            repetitions=repetitions,
            lora_rank=lora_rank,
            sync=lambda: _sync(device),
        )
    result = {
        "model": name,
        "size": f"{size}x{size}",
        "steps": steps,
        "dtype": dtype_name,
        "raw_its": round(raw_its, 3),
        "engine_its": round(engine_its, 3),
        "engine_over_raw": round(paired.median_ratio, 4),
        "engine_over_raw_target": "<= 1.05",
        "engine_over_raw_met": paired.median_ratio <= 1.05,
        **paired.summary("engine", "raw"),
        "two_person_job": {**job, "persons": "two person passes, strength 0.5, a random LoRA each"},
        "lora_switch_fraction": round(switch_fraction, 6),
        "lora_switch": switch,
        "batched_base": batched,
        "compiled": compiled,
        "build_seconds": round(built, 1),
        "load_seconds": round(loaded, 1),
    }
    if device.startswith("cuda"):
        result["max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return result


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


def _release(device: str) -> None:
    """Free the family's engine (out of scope now) before the next family loads."""
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _loras(model_path: Path, directory: Path, *, rank: int) -> list[workload.Lora]:
    import hashlib

    from multipass_dev.tiny_models.diffusion import write_random_lora

    loras = []
    for index in range(2):
        path = directory / f"lora-{index}-r{rank}.safetensors"
        if not path.exists():
            write_random_lora(model_path, path, seed=700 + index, rank=rank)
        loras.append(workload.Lora(f"80000{index}", path, hashlib.sha256(path.read_bytes()).hexdigest()))
    return loras


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
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        parser.error(f"unknown families: {', '.join(bad)}")
    root = (args.dir or workload.bench_dir().parent / "bench-gpu").absolute()
    if device == "cpu":
        workload.set_threads(1)
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # random fp16 weights decode to NaN images
    started = time.perf_counter()
    result = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "tiny": args.tiny,
        "families": {},
        "machine": report.machine_info(),
        "versions": report.versions(),
    }
    for family in families:
        report.say(
            f"gpu bench: {family} ({'tiny configs' if args.tiny else 'real architecture'}) on {device}"
        )
        result["families"][family] = bench_family(
            root,
            family,
            tiny=args.tiny,
            device=device,
            steps=args.steps,
            repetitions=args.repetitions,
            lora_rank=args.lora_rank or (4 if args.tiny else 32),
            compile_request=args.compile,
        )
        _release(device)
    result["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    print(report.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
