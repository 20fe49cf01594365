"""``parallel_persons_speedup``: two persons whose crops avoid each other's masks, one after the other vs at
the same time.

* Through the local stack (the figure, :func:`parallel_persons_through_stack`): the latency of a two-person
  job on a stack with 1 diffusion worker and ``MULTIPASS_GATEWAY_PARALLEL_PERSONS=false`` (person-0, then
  person-1 on its output) over the same job on a stack with 2 diffusion workers and parallel persons on
  (both persons on the segmented image at once, then the ``composite`` pass). The final images must be
  byte-identical.
* Engine level (``details["engine_level"]``, :func:`parallel_persons`): the same two passes on persistent
  engine processes, composited in the bench, without the gateway, NATS or S3.

Workers run with ``threads`` torch threads each. Person ``i``'s output differs from its input only where its
feathered paste mask is non-zero, and it reads only its crop box, so when no crop box meets the other
person's paste mask the composite equals the sequential result byte for byte; both measurements check the
equality.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import statistics
import time
from pathlib import Path

import numpy as np

from multipass_bench import workload
from multipass_bench.report import MetricUnavailable

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
    from multipass_diffusion.imaging.crop_inpaint import feather
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
        "note": "engine level: the same comparison without gateway, NATS or S3 (persistent engine processes)",
    }
    return statistics.median(ratios), details


# --- through the local stack -------------------------------------------------------------------------------

#: A two-person job whose persons' crops avoid each other's masks: a wide, low scene (person crops are as
#: wide as the image's aspect makes them, capped at 2:1, so persons must be far apart for their crops to
#: miss each other's masks; the default layout puts them at a quarter and three quarters of the width).
#: ``{take}`` varies the persons' prompts per pair: their passes miss the pass cache while the base and
#: segment passes (same prompt and seed as the warm-up job) hit it, so the jobs time the persons.
STACK_PROMPT = (
    "a long promenade by the sea at dusk BREAK candid photo, soft light "
    "BREAK ohwx woman, red evening gown, take {take} BREAK ohwx man, black tuxedo, take {take}"
)
#: Strength 1: the person passes run all their steps (the work that parallel persons split).
STACK_PARAMS = {"steps": "8", "w": "1536", "h": "256", "seed": "5", "denoising_strength": "1.0"}
#: Person crops run at this short side on the stack's workers (bigger than the stack's default 64 so the
#: person passes, not the orchestration, dominate the job).
STACK_PERSON_WORKING_SIZE = 256


def _final_bytes(reader, job) -> bytes:
    image = job.images[0]
    return reader.read(image.final.bucket, image.final.key)


class _Stacks:
    """One local stack per variant (name → (diffusion replicas, service env)), started at the same time.

    Each stack is started and stopped by its own thread, which lives until :meth:`stop`: the supervisor
    ties its processes to the thread that spawned them (they die with it)."""

    def __init__(self, model_root: Path, directory: Path, variants: dict):
        import threading
        from dataclasses import replace

        from multipass_bench.stack_bench import BenchStack
        from multipass_dev.stack.local_stack import LocalStack

        self.stacks = {}
        for name, (replicas, service_env) in variants.items():
            bench_stack = BenchStack(Path(directory) / name, model_root, service_env=service_env)
            config = replace(bench_stack.stack.config, diffusion_replicas=replicas)
            bench_stack.stack = LocalStack(config, on_progress=bench_stack.stack._on_progress)
            self.stacks[name] = bench_stack
        self._errors: dict[str, BaseException] = {}
        self._ready = {name: threading.Event() for name in self.stacks}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(name,), daemon=True, name=f"stack-{name}")
            for name in self.stacks
        ]
        for thread in self._threads:
            thread.start()
        for event in self._ready.values():
            event.wait()
        if self._errors:
            self.stop()
            raise MetricUnavailable("; ".join(f"{name}: {error}" for name, error in self._errors.items()))

    def _run(self, name: str) -> None:
        stack = self.stacks[name]
        try:
            stack.__enter__()
        except BaseException as error:  # noqa: BLE001 - reported by the constructor
            self._errors[name] = error
            self._ready[name].set()
            return
        self._ready[name].set()
        self._stop.wait()
        stack.__exit__(None, None, None)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)


def parallel_persons_through_stack(
    model_root: Path, directory: Path, *, repetitions: int = 3, threads: int = 1
) -> tuple:
    """Job latency of a two-person job (disjoint persons): the local stack with 1 diffusion worker and
    parallel persons off (the sequential chain) over the same stack with 2 workers and parallel persons on
    (both persons at once, then the composite pass). Both stacks run at the same time, jobs interleaved in
    pairs (order alternating); median of the pairs' ratios. The final images must be byte-identical."""
    from multipass_bench.stack_bench import run_job

    env = {
        "MULTIPASS_DIFFUSION_TORCH_THREADS": str(threads),
        "MULTIPASS_DIFFUSION_WORKING_SIZE": str(STACK_PERSON_WORKING_SIZE),
        # A worker holding passes beyond the one it runs could take both persons of a stage.
        "MULTIPASS_DIFFUSION_PREFETCH": "0",
    }
    variants = {
        "sequential": (1, {**env, "MULTIPASS_GATEWAY_PARALLEL_PERSONS": "false"}),
        "parallel": (2, {**env, "MULTIPASS_GATEWAY_PARALLEL_PERSONS": "true"}),
    }
    seconds: dict[str, list[float]] = {"sequential": [], "parallel": []}
    finals: dict[str, list[bytes]] = {"sequential": [], "parallel": []}
    chains: dict[str, list[str]] = {}
    slots: dict[str, list] = {}
    passes: dict[str, list[dict[str, float]]] = {"sequential": [], "parallel": []}
    started = time.perf_counter()
    running = _Stacks(model_root, directory, variants)
    stacks = running.stacks
    try:
        clients = {name: stack.client() for name, stack in stacks.items()}
        readers = {name: stack.reader() for name, stack in stacks.items()}
        startup = time.perf_counter() - started

        def job(name: str, take: str):
            return run_job(clients[name], STACK_PROMPT.format(take=take), STACK_PARAMS)

        # Warm-up, both stacks at once: models paged in, consumers made, base and segment cached.
        with concurrent.futures.ThreadPoolExecutor(len(stacks)) as pool:
            list(pool.map(lambda name: job(name, "warm-up"), stacks))
        warm_up = time.perf_counter() - started - startup
        for index in range(repetitions):
            order = ("sequential", "parallel") if index % 2 == 0 else ("parallel", "sequential")
            for name in order:
                run = job(name, str(index))
                seconds[name].append(run.seconds)
                finals[name].append(_final_bytes(readers[name], run.job))
                chains[name] = [p.name for p in run.job.images[0].passes]
                passes[name].append(_pass_seconds(run.job))
                slots[name] = [
                    [round(v) for v in (p.slot_box.x0, p.slot_box.y0, p.slot_box.x1, p.slot_box.y1)]
                    for p in run.job.persons
                ]
    finally:
        running.stop()
    total = time.perf_counter() - started
    if "composite-0" not in chains.get("parallel", []):
        raise MetricUnavailable(
            f"the parallel stack ran no composite pass: chain {chains.get('parallel')}, person slots {slots}"
        )
    if "composite-0" in chains.get("sequential", []):
        raise MetricUnavailable("the sequential stack ran a composite pass")
    identical = finals["sequential"] == finals["parallel"]
    if not identical:
        raise MetricUnavailable("the parallel job's final image differs from the sequential job's")
    ratios = [s / p for s, p in zip(seconds["sequential"], seconds["parallel"], strict=True)]
    details = {
        "compared": "two-person job through the local stack: 1 diffusion worker, "
        "MULTIPASS_GATEWAY_PARALLEL_PERSONS=false (person-0 then person-1) vs 2 diffusion workers, "
        "parallel persons on (person-0 and person-1 at once, then composite-0); "
        f"torch threads={threads} per worker, MULTIPASS_DIFFUSION_PREFETCH=0 (one pass held per worker)",
        "job": {
            "prompt": STACK_PROMPT,
            "params": STACK_PARAMS,
        },
        "person_working_size": STACK_PERSON_WORKING_SIZE,
        "chains": chains,
        "final_images_identical": identical,
        "sequential_seconds": [round(x, 4) for x in seconds["sequential"]],
        "parallel_seconds": [round(x, 4) for x in seconds["parallel"]],
        "sequential_seconds_median": round(statistics.median(seconds["sequential"]), 4),
        "parallel_seconds_median": round(statistics.median(seconds["parallel"]), 4),
        "ratios": [round(r, 4) for r in ratios],
        "pass_seconds": passes,
        "person_slots": slots.get("parallel"),
        "repetitions": repetitions,
        "stack_startup_seconds": round(startup, 2),
        "warm_up_seconds": round(warm_up, 2),
        "stack_total_seconds": round(total, 2),
    }
    return statistics.median(ratios), details


def _pass_seconds(job) -> dict[str, float]:
    """Seconds from started to finished of each pass of the job's first image (as the gateway recorded)."""
    found = {}
    for state in job.images[0].passes:
        if state.HasField("started_at") and state.HasField("finished_at"):
            seconds = state.finished_at.ToNanoseconds() - state.started_at.ToNanoseconds()
            found[state.name] = round(seconds / 1e9, 3)
    return found


def parallel_persons_speedup(
    model_root: Path, directory: Path, *, repetitions: int = 3, engine_level: bool = True
) -> tuple:
    """The figure: job latency through the local stack, 2 diffusion workers (parallel persons) over 1
    (sequential), with the engine-level measurement of the same idea under ``details["engine_level"]``
    (skipped when ``engine_level`` is false: the --quick plan)."""
    value, details = parallel_persons_through_stack(model_root, directory, repetitions=repetitions)
    if not engine_level:
        details["engine_level"] = {"value": None, "reason": "not measured in the --quick plan"}
        return value, details
    started = time.perf_counter()
    try:
        engine_value, engine_details = parallel_persons(
            model_root, repetitions=1, working_size=STACK_PERSON_WORKING_SIZE
        )
        details["engine_level"] = {"value": round(engine_value, 4), **engine_details}
    except MetricUnavailable as error:
        details["engine_level"] = {"value": None, "reason": str(error)}
    details["engine_level"]["seconds"] = round(time.perf_counter() - started, 2)
    return value, details
