"""``multipass bench``: the benchmark figures (``make bench``), or ``--gpu`` for the GPU benchmark."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="measure the benchmark figures (one JSON object on the last line)",
        description=(
            "Measure Multipass's figures on tiny models (docs/BENCHMARKS.md): orchestration overhead, "
            "control-plane throughput, crop vs whole-image inpaint, LoRA switching, pass cache, shared "
            "components memory, parallel persons. With --gpu: raw diffusers vs the engine on the real "
            "SD1.5/SDXL architectures with random weights (scripts/bench_gpu.py)."
        ),
    )
    bench.add_argument(
        "--gpu", action="store_true", help="the GPU benchmark instead (needs CUDA unless --tiny)"
    )
    bench.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    bench.add_argument("--json", action="store_true", help="print only the JSON object")
    bench.add_argument("--only", default="", help="comma-separated figures to measure (default: all)")
    bench.add_argument("--tiny", action="store_true", help="with --gpu: tiny configs, runs on CPU")
    bench.add_argument("--steps", type=int, help="with --gpu: denoising steps (default 30)")
    bench.add_argument("--families", help="with --gpu: sd15,sdxl (default both)")
    bench.set_defaults(run=run_bench)


def gpu_argv(args: argparse.Namespace) -> list[str]:
    argv = []
    if args.tiny:
        argv.append("--tiny")
    if args.quick:
        argv += ["--repetitions", "1"]
    if args.steps:
        argv += ["--steps", str(args.steps)]
    if args.families:
        argv += ["--families", args.families]
    return argv


def bench_argv(args: argparse.Namespace) -> list[str]:
    argv = []
    if args.quick:
        argv.append("--quick")
    if args.json:
        argv.append("--json")
    if args.only:
        argv += ["--only", args.only]
    return argv


def run_bench(args: argparse.Namespace) -> int:
    if args.gpu:
        from multipass_bench.gpu import main as gpu_main

        return gpu_main(gpu_argv(args))
    if args.tiny or args.steps or args.families:
        print("multipass bench: --tiny, --steps and --families go with --gpu")
        return 2
    from multipass_bench.runner import main as bench_main

    return bench_main(bench_argv(args))
