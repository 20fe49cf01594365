"""One variant of the shared-components memory measurement, in a fresh process (its RSS is its own).

``python -m multipass_bench.memory_probe --model-root DIR --variant one|all|copies`` loads the diffusion
worker's engine on the tiny SD1.5 model (with its inpainting UNet and the pose ControlNet), then:

* ``one``: keeps the single text-to-image pipeline the engine loads;
* ``all``: builds every pipeline the passes use (txt2img, img2img, inpaint, each with and without the
  ControlNet) through ``ComponentSet.pipeline`` (``from_pipe``: the same modules);
* ``copies``: the calibration: ``one`` plus a deep copy of every weight-holding module, i.e. what
  each extra pipeline would cost if it held its own weights.

It prints one JSON line: RSS after imports, after loading, at the end, and the bytes of parameter
storage reachable from the pipelines, counted once per distinct storage (``data_ptr``) and in total.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
from pathlib import Path

VARIANTS = ("one", "all", "copies")


def rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process(os.getpid()).memory_info().rss)
    except ImportError:
        with open(f"/proc/{os.getpid()}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def parameter_bytes(pipelines, extra_modules=()) -> tuple[int, int]:
    """(bytes of distinct parameter/buffer storages, bytes counting every module of every pipeline),
    over the pipelines' modules and ``extra_modules`` (loaded modules no pipeline holds yet)."""
    import torch

    distinct: dict[int, int] = {}
    total = 0
    modules = [c for pipe in pipelines for c in pipe.components.values()] + list(extra_modules)
    for component in modules:
        if not isinstance(component, torch.nn.Module):
            continue
        for tensor in [*component.parameters(), *component.buffers()]:
            size = tensor.numel() * tensor.element_size()
            total += size
            pointer = tensor.untyped_storage().data_ptr()
            distinct[pointer] = max(distinct.get(pointer, 0), size)
    return sum(distinct.values()), total


def measure(model_root: Path, variant: str) -> dict:
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
    from multipass_bench import workload

    workload.set_threads(1)
    from multipass_diffusion.engine import Engine  # noqa: F401 - imports count in the baseline

    gc.collect()
    after_imports = rss_bytes()
    engine = workload.make_engine(model_root, threads=1)
    runtime = engine.runtime(workload.SD15)
    controlnet = runtime.controlnet("pose")
    components = runtime.base
    gc.collect()
    after_load = rss_bytes()
    pipelines = [components.pipe]
    keep = []
    if variant == "all":
        from multipass_diffusion.pipelines import TASKS

        for task in TASKS:
            for net in (None, controlnet):
                pipelines.append(components.pipeline(task, net))
    elif variant == "copies":
        import torch

        keep = [
            copy.deepcopy(module)
            for module in (*components.pipe.components.values(), components.inpaint_unet, controlnet)
            if isinstance(module, torch.nn.Module)
        ]
    gc.collect()
    end = rss_bytes()
    distinct, total = parameter_bytes(
        pipelines, [m for m in (components.inpaint_unet, controlnet) if m is not None]
    )
    copies_bytes = sum(
        t.numel() * t.element_size() for module in keep for t in [*module.parameters(), *module.buffers()]
    )
    return {
        "variant": variant,
        "pid": os.getpid(),
        "rss_after_imports": after_imports,
        "rss_after_load": after_load,
        "rss": end,
        "pipelines": len({id(p) for p in pipelines}),
        "parameter_bytes_distinct": distinct,
        "parameter_bytes_total": total,
        "copied_bytes": copies_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multipass_bench.memory_probe")
    parser.add_argument("--model-root", type=Path, required=True)
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.model_root, args.variant)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
