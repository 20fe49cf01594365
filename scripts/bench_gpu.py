#!/usr/bin/env python3
"""GPU benchmark: raw diffusers vs the Multipass engine on the real SD1.5 and SDXL architectures.

    .venv/bin/python scripts/bench_gpu.py                 # CUDA, fp16, 30 steps, SD1.5 512 + SDXL 1024
    .venv/bin/python scripts/bench_gpu.py --tiny          # tiny configs of the same architectures, on CPU
    .venv/bin/multipass bench --gpu                       # the same as the first line
    scripts/gpu_check.sh [--tiny]                         # tests/gpu, then this, time-boxed (8 min)

Prints one JSON line (docs/BENCHMARKS.md, "GPU check"): raw diffusers vs engine it/s for the base, person
and hires passes, the compiled variant, a two-person job, LoRA switch, batched base, peak memory and the
targets. The work is in ``multipass_bench.gpu`` (with ``gpu_models``, ``gpu_passes``, ``gpu_report``,
``compile_bench``).
"""

import sys

from multipass_bench.gpu import main

if __name__ == "__main__":
    sys.exit(main())
