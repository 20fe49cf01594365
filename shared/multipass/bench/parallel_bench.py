"""Two person passes on disjoint regions: one worker running them one after the other vs two workers
running one each at the same time, their outputs composited onto the base image.

The engine and gateway run person passes sequentially today; this measures the engine-level
equivalent of the parallel plan (design.md: "disjoint masks may run in parallel on several GPUs and be
composited"). Workers are persistent processes (model loaded before timing) with ``threads`` torch
threads each; latency = from handing out the work to holding the final image (IPC and compositing
included). Person ``i``'s output differs from the base image only where its feathered paste mask is
non-zero, and it reads only its crop box, so when no crop box meets the other person's paste mask the
composite equals the sequential result byte for byte; the bench checks both the precondition and the
equality.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import statistics
import time
from pathlib import Path

import numpy as np

from multipass.bench import workload
from multipass.bench.report import MetricUnavailable

IMAGE_SIZE = (768, 512)
#: Person boxes (x0, y0, x1, y1): two standing figures, far enough apart for disjoint crops.
PERSON_BOXES = ((80, 96, 260, 480), (508, 96, 688, 480))


def composite(base: np.ndarray, outputs: list[np.ndarray], paste_masks: list[np.ndarray]) -> np.ndarray:
    """``base`` with each output's pixels where its paste mask is non-zero (masks must not overlap)."""
    result = base.copy()
    covered = np.zeros(base.shape[:2], dtype=bool)
    for output, alpha in zip(outputs, paste_masks, strict=True):
        region = alpha > 0
        if (covered & region).any():
            raise ValueError("paste masks overlap: the passes are not independent")
        covered |= region
        result[region] = output[region]
    return result


def parse_box(text: str) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (int(v) for v in text.split(","))
    return x0, y0, x1, y1


def independent(crop_boxes: list[tuple[int, int, int, int]], paste_masks: list[np.ndarray]) -> bool:
    """True when no pass's crop box contains a pixel another pass pastes (so order does not matter)."""
    for i, (x0, y0, x1, y1) in enumerate(crop_boxes):
        for j, alpha in enumerate(paste_masks):
            if i != j and (alpha[y0:y1, x0:x1] > 0).any():
                return False
    return True


def person_specs():
    specs = []
    for index, _box in enumerate(PERSON_BOXES):
        specs.append(
            workload.spec(
                kind="person",
                seed=7,
                prompt=("ohwx woman, red evening gown", "ohwx man, black tuxedo")[index],
                denoising_strength=0.5,
                crop_padding=32,
                crop_factor=1.0,
                # Only the aspect is used: portrait crops around standing figures.
                width=256,
                height=512,
            )
        )
    return specs


def paste_masks(specs, masks) -> list[np.ndarray]:
    from multipass_diffusion.crop_inpaint import feather
    from multipass_diffusion.passes.validation import mask_blur

    return [feather(np.asarray(m), mask_blur(s)) for s, m in zip(specs, masks, strict=True)]


def spin(units: int) -> float:
    """Fixed CPU work (``units`` x 60 matmuls of 256x256 on the worker's threads); its seconds."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.rand(256, 256, generator=generator)
    started = time.perf_counter()
    for _ in range(units * 60):
        a = torch.tanh(a @ a)
    return time.perf_counter() - started


def _worker(conn, model_root: str, working_size: int, threads: int) -> None:
    import os

    from PIL import Image

    from multipass.v1 import diffusion_pb2

    workload.set_threads(threads)
    engine = workload.make_engine(Path(model_root), working_size=working_size, threads=threads)
    conn.send(("ready", os.getpid()))
    while True:
        message = conn.recv()
        if message is None:
            break
        if message[0] == "spin":
            conn.send(spin(message[1]))
            continue
        _op, image_array, jobs = message
        image = Image.fromarray(image_array)
        started = time.perf_counter()
        metadata = []
        for spec_bytes, mask_array in jobs:
            spec = diffusion_pb2.PassSpec.FromString(spec_bytes)
            output = engine.run(spec, workload.inputs(image=image, mask=Image.fromarray(mask_array)))
            image = output.image
            metadata.append(dict(output.metadata))
        conn.send((np.asarray(image.convert("RGB")), time.perf_counter() - started, metadata))
    conn.close()


class Workers:
    """``count`` persistent engine processes (spawned, so each has its own torch thread pool)."""

    def __init__(self, model_root: Path, count: int, *, working_size: int, threads: int):
        context = multiprocessing.get_context("spawn")
        self.connections = []
        self.processes = []
        for _ in range(count):
            parent, child = context.Pipe()
            process = context.Process(
                target=_worker, args=(child, str(model_root), working_size, threads), daemon=True
            )
            process.start()
            self.connections.append(parent)
            self.processes.append(process)
        for connection in self.connections:
            if not connection.poll(600):
                raise MetricUnavailable("a bench worker did not load its engine within 600 s")
            connection.recv()

    def submit(self, index: int, image: np.ndarray, jobs) -> None:
        self.connections[index].send(("run", image, jobs))

    def spin(self, index: int, units: int) -> None:
        self.connections[index].send(("spin", units))

    def result(self, index: int):
        return self.connections[index].recv()

    def close(self) -> None:
        for connection in self.connections:
            with contextlib.suppress(OSError, BrokenPipeError):
                connection.send(None)
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)


def parallel_persons(
    model_root: Path, *, repetitions: int = 3, working_size: int = 256, threads: int = 1
) -> tuple:
    """Sequential latency (1 worker, ``threads`` threads) over parallel latency (2 workers, ``threads``
    each, plus compositing), median of paired repetitions after one warm-up of each."""
    base = np.asarray(workload.scene(IMAGE_SIZE, seed=5))
    masks = [workload.box_mask(IMAGE_SIZE, box) for box in PERSON_BOXES]
    specs = person_specs()
    alphas = paste_masks(specs, masks)
    jobs = [(s.SerializeToString(), np.asarray(m)) for s, m in zip(specs, masks, strict=True)]
    workers = Workers(model_root, 2, working_size=working_size, threads=threads)
    sequential, parallel, equal, capacities = [], [], [], []
    crop_boxes: list = []
    try:

        def run_sequential():
            started = time.perf_counter()
            workers.submit(0, base, jobs)
            final, _seconds, metadata = workers.result(0)
            return time.perf_counter() - started, final, metadata

        def run_parallel():
            started = time.perf_counter()
            workers.submit(0, base, jobs[:1])
            workers.submit(1, base, jobs[1:])
            first, _s0, meta0 = workers.result(0)
            second, _s1, meta1 = workers.result(1)
            final = composite(base, [first, second], alphas)
            return time.perf_counter() - started, final, meta0 + meta1

        def capacity() -> float:
            """Seconds of 2 units on one worker over 1 unit on each of two at once: ~2 with two free
            cores, ~1 when the machine has one core's worth to give (other load)."""
            started = time.perf_counter()
            workers.spin(0, 2)
            workers.result(0)
            alone = time.perf_counter() - started
            started = time.perf_counter()
            workers.spin(0, 1)
            workers.spin(1, 1)
            workers.result(0)
            workers.result(1)
            return alone / (time.perf_counter() - started)

        run_sequential()
        run_parallel()
        for index in range(repetitions):
            capacities.append(capacity())
            order = ("seq", "par") if index % 2 == 0 else ("par", "seq")
            results = {}
            for name in order:
                seconds, final, metadata = run_sequential() if name == "seq" else run_parallel()
                (sequential if name == "seq" else parallel).append(seconds)
                results[name] = (final, metadata)
            crop_boxes = [parse_box(m["crop_box"]) for m in results["par"][1]]
            equal.append(bool(np.array_equal(results["seq"][0], results["par"][0])))
    finally:
        workers.close()
    if not independent(crop_boxes, alphas):
        raise MetricUnavailable(f"crop boxes {crop_boxes} meet the other person's paste mask")
    if not all(equal):
        raise MetricUnavailable("the parallel composite differs from the sequential result")
    ratios = [s / p for s, p in zip(sequential, parallel, strict=True)]
    details = {
        "compared": f"1 worker process, torch threads={threads}, person-0 then person-1 on its output; vs 2 "
        f"worker processes, torch threads={threads} each, one person each on the base image at once, "
        "outputs composited by their paste masks",
        "image": f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}",
        "person_boxes": [list(b) for b in PERSON_BOXES],
        "crop_boxes": [list(b) for b in crop_boxes],
        "working_size": working_size,
        "steps": "20 at strength 0.5 (10 run)",
        "composite_equals_sequential": all(equal),
        "sequential_seconds": [round(x, 4) for x in sequential],
        "parallel_seconds": [round(x, 4) for x in parallel],
        "sequential_seconds_median": round(statistics.median(sequential), 4),
        "parallel_seconds_median": round(statistics.median(parallel), 4),
        "ratios": [round(r, 4) for r in ratios],
        "cpu_parallel_capacity": [round(c, 3) for c in capacities],
        "cpu_parallel_capacity_note": "fixed CPU work: 2 units on one process / 1 unit on each of two at "
        "once, measured before each pair; 2.0 = two free cores, 1.0 = no parallelism to be had",
        "repetitions": repetitions,
        "note": "engine-level equivalent: the gateway runs person passes sequentially today",
    }
    return statistics.median(ratios), details
